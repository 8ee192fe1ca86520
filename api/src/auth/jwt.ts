import { Type, type Static } from '@sinclair/typebox'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import { createVerifier, TokenError } from 'fast-jwt'
import { createLocalJWKSet, createRemoteJWKSet, decodeProtectedHeader, errors, jwksCache, jwtVerify, type JWKSCacheInput, type JWTVerifyGetKey } from 'jose'
import type { Config } from '../../../core/config'
import type { Logger } from '../../../core/logger'
import { ActorId, DisplayName, storableText } from '../../../core/events'
import { problemMessage } from '../../../core/validation'
import { TokenExpired, Unauthorized, Unavailable } from '../errors'
import type { UserPrincipal } from './principal'

/**
 * The latest `exp` (and revocation `exp`) accepted: the end of year 9999, as JWT NumericDate
 * (seconds). A token expiring later could not be revoked by its jti (POST /admin/tokens/revoke
 * takes its `exp` up to this), and past year 275760 its expiry is no JavaScript date at all.
 */
export const MAX_EXP = 253_402_300_799

/**
 * A token's `jti`, as a token carries it and POST /admin/tokens/revoke takes it: text Postgres
 * stores as it is. A NUL cannot be stored (the revocation failed), and a lone surrogate is stored
 * as U+FFFD: after a reload the revocation no longer refused its token, and refused another's.
 */
export const Jti = Type.String(storableText(128))

/** The claims Fanfare reads from a user token; others are ignored. */
export const UserClaims = Type.Object({
  sub: ActorId,
  exp: Type.Number({ maximum: MAX_EXP }),
  iat: Type.Optional(Type.Number()),
  jti: Type.Optional(Jti),
  name: Type.Optional(DisplayName),
  roles: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 64 }), { maxItems: 16 })),
  channels: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 261 }), { maxItems: 64 })),
})
export type UserClaims = Static<typeof UserClaims>
const claimsCheck = TypeCompiler.Compile(UserClaims)

/** Algorithms accepted for HS tokens (FANFARE_JWT_SECRET) and for JWKS keys. Never `none`. */
export const SECRET_ALGORITHMS: ['HS256'] = ['HS256']
export const JWKS_ALGORITHMS = ['RS256', 'ES256', 'EdDSA', 'Ed25519']

/** Seconds two clocks may disagree by when exp, nbf and iat are checked. */
const CLOCK_TOLERANCE_S = 5

/**
 * A user token's principal. An HS256 token is answered at once (returned, or thrown), so the
 * upgrade of a WebSocket with one waits on nothing; a JWKS token through a promise (its keys may
 * have to be fetched, and its signature is checked off the event loop). Callers await either.
 */
export type JwtVerifier = (token: string) => UserPrincipal | Promise<UserPrincipal>

/**
 * Verifies players' and viewers' tokens: HS256 with FANFARE_JWT_SECRET (or, while it is rotated,
 * FANFARE_JWT_PREVIOUS_SECRET), and/or the keys
 * FANFARE_JWKS_URL serves (cached by jose, fetched again when a token names an unknown `kid`).
 * Always with an algorithm allowlist, `exp` and `sub` required, `iss`/`aud` checked when
 * configured. Expired: TokenExpired (401 token_expired); anything else wrong: 401 invalid_token.
 * Undefined when neither is configured (no user tokens are accepted).
 *
 * One library per kind of key, each where it is cheapest (bench/findings.md, "JWT connects, third
 * look"): fast-jwt checks HS256 with node:crypto's synchronous HMAC (jose's only HMAC path is the
 * async WebCrypto round trip, which cost more than the HMAC itself on every connect); jose keeps
 * JWKS keys (fetching, key selection, cooldown) and verifies RS/ES/EdDSA signatures on WebCrypto's
 * thread pool, off the event loop (fast-jwt would run them on it, 17-43 µs each). Both get the same
 * claims, the same tolerance and the same checks after them; jwt.test.ts holds them to each other.
 */
export function createJwtVerifier(
  config: Pick<Config, 'FANFARE_JWT_SECRET' | 'FANFARE_JWT_PREVIOUS_SECRET' | 'FANFARE_JWKS_URL' | 'FANFARE_JWT_ISSUER' | 'FANFARE_JWT_AUDIENCE'>,
  opts: {
    now?: () => number
    /** At most one JWKS fetch per this long (an unknown kid fetches again after it). */
    jwksCooldownMs?: number
    /** How long a fetched JWKS is used before it is fetched again (default 10 minutes). */
    jwksCacheMaxAgeMs?: number
    /** Told of every failed fetch of the JWKS (a warning: sign-ins may fail until it is back). */
    logger?: Logger
  } = {},
): JwtVerifier | undefined {
  const secret = config.FANFARE_JWT_SECRET ? hs256Verifier(config.FANFARE_JWT_SECRET, config.FANFARE_JWT_PREVIOUS_SECRET, config, opts.now) : undefined
  const jwks = config.FANFARE_JWKS_URL ? remoteKeys(new URL(config.FANFARE_JWKS_URL), { cooldownMs: opts.jwksCooldownMs ?? 30_000, cacheMaxAgeMs: opts.jwksCacheMaxAgeMs ?? 10 * 60_000, logger: opts.logger }) : undefined
  if (!secret && !jwks) return undefined
  const verifyJwks = async (token: string): Promise<unknown> =>
    (
      await jwtVerify(token, jwks!, {
        algorithms: JWKS_ALGORITHMS,
        issuer: config.FANFARE_JWT_ISSUER,
        audience: config.FANFARE_JWT_AUDIENCE,
        requiredClaims: ['sub', 'exp'],
        clockTolerance: CLOCK_TOLERANCE_S,
        currentDate: opts.now ? new Date(opts.now()) : undefined,
      })
    ).payload
  const fromSecret = (token: string) => {
    let payload: unknown
    try {
      payload = secret!(token)
    } catch (err) {
      throw refusal(err)
    }
    return principalOf(payload, opts.now)
  }
  if (!jwks) return fromSecret
  const fromJwks = (token: string) =>
    verifyJwks(token).then(
      (payload) => principalOf(payload, opts.now),
      (err) => {
        throw refusal(err)
      },
    )
  // Which library checks a token is chosen by its header's alg; each refuses every other alg, so
  // an HS256 token never meets a JWKS key and a JWKS key is never an HMAC secret.
  return (token) => (secret && alg(token) === 'HS256' ? fromSecret(token) : fromJwks(token))
}

/** The principal of a verified token's claims: the same checks after either library. */
function principalOf(payload: unknown, now?: () => number): UserPrincipal {
  if (!claimsCheck.Check(payload)) {
    const first = claimsCheck.Errors(payload).First()
    throw new Unauthorized(`invalid token claims: ${first?.path ?? ''} ${first ? problemMessage(first) : ''}`.trim(), 'invalid_token')
  }
  const c = payload as UserClaims
  // Neither library checks iat unless given a maximum age. A token "issued" in the future would outlive every
  // revocation of its user (POST /admin/users/:user/revoke refuses tokens by iat) until then.
  if (c.iat !== undefined && c.iat > (now ? now() : Date.now()) / 1000 + CLOCK_TOLERANCE_S) {
    throw new Unauthorized('invalid token: "iat" claim timestamp check failed (it should be in the past)', 'invalid_token')
  }
  // Set one by one, not spread in: one object per connect, not four.
  const user: UserPrincipal = { kind: 'user', id: c.sub, roles: c.roles ?? [], channels: c.channels ?? [], expiresAt: c.exp * 1000 }
  if (c.name) user.name = c.name
  if (c.iat !== undefined) user.issuedAt = c.iat * 1000
  if (c.jti) user.jti = c.jti
  return user
}

/**
 * HS256 tokens, checked synchronously by fast-jwt with the options jose gets for JWKS tokens. Its
 * tolerance is in ms; it checks iss/aud only when present, hence required when configured. Its
 * clock is fixed when it is made: with an injected clock, one is made per token.
 *
 * During a rotation (`previous` set) a token whose signature the current secret refuses is checked
 * again with the previous one; fast-jwt checks the signature before any claim, so every other
 * refusal is the current secret's own and final. A token neither secret signed gets the current
 * secret's refusal, as it would without a rotation. The common path, a token of the current
 * secret, costs what it did: one HMAC.
 */
function hs256Verifier(current: string, previous: string | undefined, config: Pick<Config, 'FANFARE_JWT_ISSUER' | 'FANFARE_JWT_AUDIENCE'>, now?: () => number) {
  const withSecret = (secret: string) => {
    const make = (clockTimestamp?: number) =>
      createVerifier({
        key: secret,
        algorithms: SECRET_ALGORITHMS,
        allowedIss: config.FANFARE_JWT_ISSUER,
        allowedAud: config.FANFARE_JWT_AUDIENCE,
        requiredClaims: ['sub', 'exp', ...(config.FANFARE_JWT_ISSUER ? ['iss'] : []), ...(config.FANFARE_JWT_AUDIENCE ? ['aud'] : [])],
        clockTolerance: CLOCK_TOLERANCE_S * 1000,
        clockTimestamp,
      }) as (token: string) => unknown
    if (now) return (token: string) => make(now())(token)
    return make()
  }
  const verifyCurrent = withSecret(current)
  if (!previous) return verifyCurrent
  const verifyPrevious = withSecret(previous)
  return (token: string) => {
    try {
      return verifyCurrent(token)
    } catch (err) {
      if (!(err instanceof TokenError && err.code === TokenError.codes.invalidSignature)) throw err
      try {
        return verifyPrevious(token)
      } catch (again) {
        throw again instanceof TokenError && again.code === TokenError.codes.invalidSignature ? err : again
      }
    }
  }
}

/** The header's alg, or undefined when there is no readable header (the verifier then says why). */
function alg(token: string): unknown {
  try {
    return decodeProtectedHeader(token).alg
  } catch {
    return undefined
  }
}

/**
 * What jose answers when the key set it has does not serve a token: the token names a key the set
 * lacks (or several), or one of an algorithm it has no key type for. A refusal of the token.
 */
const KEY_REFUSALS = new Set(['ERR_JWKS_NO_MATCHING_KEY', 'ERR_JWKS_MULTIPLE_MATCHING_KEYS', 'ERR_JOSE_NOT_SUPPORTED', 'ERR_JOSE_ALG_NOT_ALLOWED'])

/** After a failed fetch of the JWKS, how long before it is tried again (meanwhile the keys last fetched serve). */
const JWKS_RETRY_MS = 1000

/**
 * The keys of FANFARE_JWKS_URL (cached, fetched again on an unknown kid and once the cache is
 * old). A set that cannot be fetched (the auth service down or unreachable, a timeout, an answer
 * that is no key set) says nothing against the token. The keys last fetched still verify what they
 * verified (so a restart of the auth service is no outage of sign-ins), and the set is tried again
 * at most every JWKS_RETRY_MS, not on every token. A token they cannot verify then is 503
 * `auth_unavailable`, which callers retry, never 401 `invalid_token`, which is terminal (a client
 * drops the credential, and its address is charged a failed credential for it).
 */
function remoteKeys(url: URL, opts: { cooldownMs: number; cacheMaxAgeMs: number; logger?: Logger }): JWTVerifyGetKey {
  // jose writes every set it fetched here (and when): the keys the stale path verifies with.
  const fetched: JWKSCacheInput = {}
  const remote = createRemoteJWKSet(url, { cooldownDuration: opts.cooldownMs, cacheMaxAge: opts.cacheMaxAgeMs, [jwksCache]: fetched })
  let failedAt = -Infinity
  let last: { uat: number; keys: JWTVerifyGetKey } | undefined
  const unavailable = () => new Unavailable('cannot check the token now: the key set of its issuer could not be fetched; retry shortly with the same token', 'auth_unavailable')
  // The keys last fetched; a token naming one they lack may be signed by a key the set now has.
  const stale = async (header: Parameters<JWTVerifyGetKey>[0], token: Parameters<JWTVerifyGetKey>[1]) => {
    if (!('jwks' in fetched)) throw unavailable()
    if (last?.uat !== fetched.uat) last = { uat: fetched.uat, keys: createLocalJWKSet(fetched.jwks) }
    try {
      return await last.keys(header, token)
    } catch (err) {
      throw isKeyRefusal(err) ? unavailable() : err
    }
  }
  return async (header, token) => {
    if (performance.now() - failedAt < JWKS_RETRY_MS) return stale(header, token)
    try {
      return await remote(header, token)
    } catch (err) {
      if (isKeyRefusal(err)) throw err
      failedAt = performance.now()
      opts.logger?.warn(
        { err, component: 'auth', keysFetchedAt: 'jwks' in fetched ? new Date(fetched.uat).toISOString() : null },
        `FANFARE_JWKS_URL could not be fetched: tokens are verified with the keys last fetched (none: refused with 503 auth_unavailable) until it can; tried again in ${JWKS_RETRY_MS} ms at the earliest`,
      )
      return stale(header, token)
    }
  }
}

const isKeyRefusal = (err: unknown) => KEY_REFUSALS.has((err as { code?: string })?.code ?? '')

/** Either library's refusal as ours; their codes say what is wrong without leaking key material. */
function refusal(err: unknown): Unauthorized | Unavailable {
  if (err instanceof Unauthorized || err instanceof Unavailable) return err
  if (err instanceof errors.JWTExpired || (err instanceof TokenError && err.code === TokenError.codes.expired)) return new TokenExpired()
  return new Unauthorized(`invalid token: ${describe(err)}`, 'invalid_token')
}

function describe(err: unknown): string {
  const e = err as { code?: string; message?: string }
  switch (e?.code) {
    case 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED':
    case TokenError.codes.invalidSignature:
    case TokenError.codes.missingSignature:
      return 'signature does not verify'
    case 'ERR_JOSE_ALG_NOT_ALLOWED':
    case TokenError.codes.invalidAlgorithm:
      return 'algorithm not allowed'
    case 'ERR_JWT_CLAIM_VALIDATION_FAILED':
    case TokenError.codes.inactive:
    case TokenError.codes.missingRequiredClaim:
    case TokenError.codes.invalidClaimType:
    case TokenError.codes.invalidClaimValue:
      return e.message ?? 'claim check failed'
    case 'ERR_JWKS_NO_MATCHING_KEY':
      return 'no key matches its kid'
    case 'ERR_JWS_INVALID':
    case 'ERR_JWT_INVALID':
    case TokenError.codes.malformed:
    case TokenError.codes.invalidPayload:
    case TokenError.codes.invalidType:
      return 'malformed'
  }
  return e?.code ?? 'malformed'
}
