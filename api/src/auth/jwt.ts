import { Type, type Static } from '@sinclair/typebox'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import { createRemoteJWKSet, errors, jwtVerify, type JWTVerifyGetKey } from 'jose'
import type { Config } from '../../../core/config'
import { ActorId, DisplayName } from '../../../core/events'
import { TokenExpired, Unauthorized } from '../errors'
import type { UserPrincipal } from './principal'

/** The claims Fanfare reads from a user token; others are ignored. */
export const UserClaims = Type.Object({
  sub: ActorId,
  exp: Type.Number(),
  iat: Type.Optional(Type.Number()),
  jti: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
  name: Type.Optional(DisplayName),
  roles: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 64 }), { maxItems: 16 })),
  channels: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 261 }), { maxItems: 64 })),
})
export type UserClaims = Static<typeof UserClaims>
const claimsCheck = TypeCompiler.Compile(UserClaims)

/** Algorithms accepted for HS tokens (FANFARE_JWT_SECRET) and for JWKS keys. Never `none`. */
export const SECRET_ALGORITHMS = ['HS256']
export const JWKS_ALGORITHMS = ['RS256', 'ES256', 'EdDSA', 'Ed25519']

/** Seconds two clocks may disagree by when exp, nbf and iat are checked. */
const CLOCK_TOLERANCE_S = 5

export type JwtVerifier = (token: string) => Promise<UserPrincipal>

/**
 * Verifies players' and viewers' tokens with jose: HS256 with FANFARE_JWT_SECRET, and/or the keys
 * FANFARE_JWKS_URL serves (cached by jose, fetched again when a token names an unknown `kid`).
 * Always with an algorithm allowlist, `exp` and `sub` required, `iss`/`aud` checked when
 * configured. Expired: TokenExpired (401 token_expired); anything else wrong: 401 invalid_token.
 * Undefined when neither is configured (no user tokens are accepted).
 */
export function createJwtVerifier(
  config: Pick<Config, 'FANFARE_JWT_SECRET' | 'FANFARE_JWKS_URL' | 'FANFARE_JWT_ISSUER' | 'FANFARE_JWT_AUDIENCE'>,
  opts: { now?: () => number; /** At most one JWKS fetch per this long (an unknown kid fetches again after it). */ jwksCooldownMs?: number } = {},
): JwtVerifier | undefined {
  // Imported once: given raw bytes, jose would import the HMAC key again for every token.
  const secret = config.FANFARE_JWT_SECRET
    ? crypto.subtle.importKey('raw', new TextEncoder().encode(config.FANFARE_JWT_SECRET), { name: 'HMAC', hash: 'SHA-256' }, false, ['verify'])
    : undefined
  const jwks = config.FANFARE_JWKS_URL ? createRemoteJWKSet(new URL(config.FANFARE_JWKS_URL), { cooldownDuration: opts.jwksCooldownMs ?? 30_000, cacheMaxAge: 10 * 60_000 }) : undefined
  if (!secret && !jwks) return undefined
  const algorithms = [...(secret ? SECRET_ALGORITHMS : []), ...(jwks ? JWKS_ALGORITHMS : [])]
  // Given the secret's key itself when no JWKS is configured, jose calls no resolver per token.
  const resolve: JWTVerifyGetKey | undefined = jwks
    ? async (header, token) => {
        if (header.alg === 'HS256') {
          if (!secret) throw new Unauthorized('HS256 tokens are not accepted here', 'invalid_token')
          return secret
        }
        return jwks(header, token)
      }
    : undefined
  return async (token) => {
    let payload: unknown
    try {
      // jose parses the header itself: what is not a JWT at all fails there (ERR_JWS_INVALID).
      ;({ payload } = await jwtVerify(token, resolve ?? (await secret!), {
        algorithms,
        issuer: config.FANFARE_JWT_ISSUER,
        audience: config.FANFARE_JWT_AUDIENCE,
        requiredClaims: ['sub', 'exp'],
        clockTolerance: CLOCK_TOLERANCE_S,
        currentDate: opts.now ? new Date(opts.now()) : undefined,
      }))
    } catch (err) {
      if (err instanceof errors.JWTExpired) throw new TokenExpired()
      if (err instanceof Unauthorized) throw err
      throw new Unauthorized(`invalid token: ${describe(err)}`, 'invalid_token')
    }
    if (!claimsCheck.Check(payload)) {
      const first = claimsCheck.Errors(payload).First()
      throw new Unauthorized(`invalid token claims: ${first?.path ?? ''} ${first?.message ?? ''}`.trim(), 'invalid_token')
    }
    const c = payload as UserClaims
    // jose checks iat only with maxTokenAge. A token "issued" in the future would outlive every
    // revocation of its user (POST /admin/users/:user/revoke refuses tokens by iat) until then.
    if (c.iat !== undefined && c.iat > (opts.now ? opts.now() : Date.now()) / 1000 + CLOCK_TOLERANCE_S) {
      throw new Unauthorized('invalid token: "iat" claim timestamp check failed (it should be in the past)', 'invalid_token')
    }
    return {
      kind: 'user',
      id: c.sub,
      ...(c.name ? { name: c.name } : {}),
      roles: c.roles ?? [],
      channels: c.channels ?? [],
      expiresAt: c.exp * 1000,
      ...(c.iat !== undefined ? { issuedAt: c.iat * 1000 } : {}),
      ...(c.jti ? { jti: c.jti } : {}),
    }
  }
}

/** jose's error codes say what is wrong without leaking key material. */
function describe(err: unknown): string {
  const e = err as { code?: string; message?: string }
  if (e?.code === 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED') return 'signature does not verify'
  if (e?.code === 'ERR_JOSE_ALG_NOT_ALLOWED') return 'algorithm not allowed'
  if (e?.code === 'ERR_JWT_CLAIM_VALIDATION_FAILED') return e.message ?? 'claim check failed'
  if (e?.code === 'ERR_JWKS_NO_MATCHING_KEY') return 'no key matches its kid'
  if (e?.code === 'ERR_JWS_INVALID' || e?.code === 'ERR_JWT_INVALID') return 'malformed'
  return e?.code ?? 'malformed'
}
