import { Elysia } from 'elysia'
import type { AuthPlugin } from '../../auth/plugin'
import { principalId, type Principal } from '../../auth/principal'
import type { Revocations } from '../../auth/revocations'
import { BodyErrors, ErrorResponse } from '../../error-model'
import type { Audit } from '../audit/service'
import { TokenRevokeBody, TokenRevoked, UserParams, UserRevokeBody, UserRevoked } from './model'

const denied = { 401: ErrorResponse, 403: ErrorResponse }

/**
 * Revoking users' tokens (admin:write): all of a user's tokens issued up to now, or one token by
 * its `jti`. Kept in Postgres (a restarted node still refuses them) and broadcast over NATS, so
 * every node refuses them at once and closes the sockets using them with 4003.
 */
export function revocationsModule(deps: { auth: AuthPlugin; revocations: Pick<Revocations, 'revokeUser' | 'revokeToken'>; audit: Audit }) {
  const revokeUser = async (user: string, principal: Principal) => {
    const r = await deps.revocations.revokeUser(user, principalId(principal))
    if (r.kind !== 'user') throw new Error(`revokeUser answered a ${r.kind} revocation`)
    const revokedBefore = new Date(r.before).toISOString()
    await deps.audit.record(principal, 'user.revoked', `user:${user}`, { revokedBefore })
    return { user, revokedBefore }
  }
  const revokeUserDescription =
    'Tokens whose `iat` is at or before this moment (and tokens without `iat`) are refused from now on: 401 `revoked`, and open WebSockets using them close with 4003 on every node within a second. `iat` counts whole seconds, so a token issued in the same second as the revocation is refused too: issue the fresh token a second later.'
  return new Elysia({ prefix: '/admin', detail: { tags: ['admin'] } })
    .use(deps.auth)
    .post('/users/:user/revoke', ({ params, principal }) => revokeUser(params.user, principal), {
      auth: 'admin:write',
      params: UserParams,
      response: { 200: UserRevoked, 422: ErrorResponse, 503: ErrorResponse, ...denied },
      detail: {
        summary: 'Revoke every token of a user issued up to now',
        description: `${revokeUserDescription} The user id is a path segment: \`.\` and \`..\` cannot be one (browsers and fetch read \`/users/./revoke\` and \`/users/%2E/revoke\` as \`/users/revoke\`): name such a user in the body of \`POST /admin/users/revoke\`.`,
      },
    })
    .post('/users/revoke', ({ body, principal }) => revokeUser(body.user, principal), {
      auth: 'admin:write',
      body: UserRevokeBody,
      response: { 200: UserRevoked, 422: ErrorResponse, 503: ErrorResponse, ...BodyErrors, ...denied },
      detail: {
        summary: 'Revoke every token of a user issued up to now (the user in the body)',
        description: `\`{ user }\`: any user id, \`.\` and \`..\` included, which no URL path can carry. ${revokeUserDescription}`,
      },
    })
    .post(
      '/tokens/revoke',
      async ({ body, principal }) => {
        // Up to the whole ms: kept at least until the token expires.
        const r = await deps.revocations.revokeToken(body.jti, new Date(Math.ceil(body.exp * 1000)), principalId(principal), body.user)
        if (r.kind !== 'token') throw new Error(`revokeToken answered a ${r.kind} revocation`)
        // What is kept: a jti revoked before with a later exp stays revoked until then.
        const expiresAt = new Date(r.exp).toISOString()
        const user = body.user === undefined ? {} : { user: body.user }
        await deps.audit.record(principal, 'token.revoked', `token:${body.jti}`, { ...user, expiresAt })
        return { jti: body.jti, ...user, expiresAt }
      },
      {
        auth: 'admin:write',
        body: TokenRevokeBody,
        response: { 200: TokenRevoked, 422: ErrorResponse, 503: ErrorResponse, ...BodyErrors, ...denied },
        detail: {
          summary: 'Revoke one token by its jti',
          description:
            "`{ jti, exp, user? }`: the token's own `jti` and `exp` claims (`exp` in seconds since the epoch, as in the token), and optionally its `sub` as `user`. The token is refused (401 `revoked`; open WebSockets close with 4003 on every node within a second) until `exp`, when it would expire anyway. With `user`, only that user's token with the jti is refused; without, every token carrying the jti is (a jti is unique per issuer, RFC 7519: name the user when the auth service might reuse jtis across users).",
        },
      },
    )
}
