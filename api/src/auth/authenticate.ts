import type { Config } from '../../../core/config'
import { sameDigest, secretDigest } from '../../../core/secrets'
import { KeyExpired, Revoked, TokenExpired, Unauthorized } from '../errors'
import type { JwtVerifier } from './jwt'
import { KEY_PREFIX, type KeyStore } from './keys'
import { rootKey, type Principal } from './principal'
import type { Revocations } from './revocations'

export type Authenticator = {
  /**
   * The principal a credential stands for: a bootstrap token, an API key (`ffk_...`) or a user
   * JWT. Refuses with Unauthorized (401 `unauthorized` / `invalid_token`), TokenExpired (401
   * `token_expired`) or Revoked (401 `revoked`); a credential it cannot check now is Unavailable
   * (503 `auth_unavailable`: a JWKS that cannot be fetched) or a database error. Answered at once (returned, or thrown) when nothing
   * has to be fetched: a bootstrap token, an HS256 user token; through a promise otherwise (an API
   * key is looked up, a JWKS token's keys may be fetched). Callers await either.
   */
  authenticate(token: string): Principal | Promise<Principal>
  /** Whether a principal an open connection holds may still act: not expired, not revoked. */
  check(p: Principal): Unauthorized | undefined
}

export function createAuthenticator(deps: {
  config: Pick<Config, 'FANFARE_INGEST_TOKEN' | 'FANFARE_ADMIN_TOKEN'>
  keys: Pick<KeyStore, 'lookup'>
  jwt: JwtVerifier | undefined
  revocations: Pick<Revocations, 'isRevoked'>
  now?: () => number
}): Authenticator {
  const now = deps.now ?? Date.now
  // Digested once: each credential then costs one hash to compare with both (it was four).
  const adminDigest = deps.config.FANFARE_ADMIN_TOKEN !== undefined ? secretDigest(deps.config.FANFARE_ADMIN_TOKEN) : undefined
  const ingestDigest = deps.config.FANFARE_INGEST_TOKEN !== undefined ? secretDigest(deps.config.FANFARE_INGEST_TOKEN) : undefined
  const check = (p: Principal): Unauthorized | undefined => {
    if (p.kind === 'anonymous') return undefined
    if (deps.revocations.isRevoked(p)) return new Revoked(p.kind === 'key' ? 'this API key was revoked' : 'this token was revoked')
    if (p.expiresAt !== undefined && p.expiresAt <= now()) return p.kind === 'user' ? new TokenExpired() : new KeyExpired()
    return undefined
  }
  const checked = <P extends Principal>(p: P): P => {
    const problem = check(p)
    if (problem) throw problem
    return p
  }
  return {
    authenticate(token) {
      // A bootstrap token has no '.' (config.ts refuses one that has), so a credential with one
      // (every JWT) cannot be either: whether it is compared depends on the credential's shape
      // alone, never on the secrets. Both are compared, so the time taken does not tell which one matched.
      if (!token.includes('.')) {
        const digest = secretDigest(token)
        const admin = adminDigest !== undefined && sameDigest(digest, adminDigest)
        const ingest = ingestDigest !== undefined && sameDigest(digest, ingestDigest)
        if (admin || ingest) return rootKey(admin ? 'admin' : 'ingest')
      }
      if (token.startsWith(KEY_PREFIX)) {
        return deps.keys.lookup(token).then((key) => {
          if (!key) throw new Unauthorized('unknown API key', 'invalid_token')
          return checked(key)
        })
      }
      if (!deps.jwt) throw new Unauthorized('unknown token (user tokens are not configured: set FANFARE_JWT_SECRET or FANFARE_JWKS_URL)', 'invalid_token')
      const user = deps.jwt(token)
      return user instanceof Promise ? user.then(checked) : checked(user)
    },
    check,
  }
}
