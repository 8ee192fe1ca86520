import type { Config } from '../../../core/config'
import { sameDigest, secretDigest } from '../../../core/secrets'
import { Revoked, TokenExpired, Unauthorized } from '../errors'
import type { JwtVerifier } from './jwt'
import { KEY_PREFIX, type KeyStore } from './keys'
import { rootKey, type Principal } from './principal'
import type { Revocations } from './revocations'

export type Authenticator = {
  /**
   * The principal a credential stands for: a bootstrap token, an API key (`ffk_...`) or a user
   * JWT. Throws Unauthorized (401 `unauthorized` / `invalid_token`), TokenExpired (401
   * `token_expired`) or Revoked (401 `revoked`).
   */
  authenticate(token: string): Promise<Principal>
  /** Whether a principal an open connection holds may still act: not expired, not revoked. */
  check(p: Principal): Unauthorized | undefined
}

export function createAuthenticator(deps: {
  config: Pick<Config, 'FANFARE_INGEST_TOKEN' | 'FANFARE_ADMIN_TOKEN'>
  keys: KeyStore
  jwt: JwtVerifier | undefined
  revocations: Revocations
  now?: () => number
}): Authenticator {
  const now = deps.now ?? Date.now
  // Digested once: each credential then costs one hash to compare with both (it was four).
  const adminDigest = deps.config.FANFARE_ADMIN_TOKEN !== undefined ? secretDigest(deps.config.FANFARE_ADMIN_TOKEN) : undefined
  const ingestDigest = deps.config.FANFARE_INGEST_TOKEN !== undefined ? secretDigest(deps.config.FANFARE_INGEST_TOKEN) : undefined
  const check = (p: Principal): Unauthorized | undefined => {
    if (p.kind === 'anonymous') return undefined
    if (deps.revocations.isRevoked(p)) return new Revoked(p.kind === 'key' ? 'this API key was revoked' : 'this token was revoked')
    if (p.expiresAt !== undefined && p.expiresAt <= now()) return p.kind === 'user' ? new TokenExpired() : new Unauthorized('this API key has expired', 'invalid_token')
    return undefined
  }
  return {
    async authenticate(token) {
      // Both bootstrap tokens are compared, so the time taken does not tell which one matched.
      const digest = secretDigest(token)
      const admin = adminDigest !== undefined && sameDigest(digest, adminDigest)
      const ingest = ingestDigest !== undefined && sameDigest(digest, ingestDigest)
      if (admin || ingest) return rootKey(admin ? 'admin' : 'ingest')
      let p: Principal
      if (token.startsWith(KEY_PREFIX)) {
        const key = await deps.keys.lookup(token)
        if (!key) throw new Unauthorized('unknown or expired API key', 'invalid_token')
        p = key
      } else if (deps.jwt) {
        p = await deps.jwt(token)
      } else {
        throw new Unauthorized('unknown token (user tokens are not configured: set FANFARE_JWT_SECRET or FANFARE_JWKS_URL)', 'invalid_token')
      }
      const problem = check(p)
      if (problem) throw problem
      return p
    },
    check,
  }
}
