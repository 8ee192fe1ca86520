import { Type } from '@sinclair/typebox'
import { t } from 'elysia'
import { ActorId } from '../../../../core/events'
import { Jti, MAX_EXP } from '../../auth/jwt'

export const UserParams = t.Object({ user: ActorId })
/**
 * The user in the body: any id a token's `sub` may hold, `.` and `..` included, which no URL can
 * carry (clients following the URL standard, browsers and fetch among them, read `/users/./revoke`
 * and `/users/%2E/revoke` as `/users/revoke`, and `/users/../revoke` as `/revoke`).
 */
export const UserRevokeBody = t.Object({ user: Type.String({ ...ActorId, description: "the user's id: the sub claim of their tokens" }) }, { additionalProperties: false })
export const UserRevoked = t.Object({
  user: t.String(),
  revokedBefore: t.String({ description: 'tokens of this user issued (iat) at or before this instant are refused (ISO 8601)' }),
})

export const TokenRevokeBody = t.Object(
  {
    jti: Type.String({ ...Jti, description: "the token's jti claim" }),
    // TypeBox's own Number: Elysia's t.Number also takes numeric strings, and then reports any bad
    // number as "Expected string". Not an integer: a NumericDate may have a fraction (RFC 7519
    // section 2; PyJWT writes one from `time.time() + 3600`), and the claim is copied as is.
    exp: Type.Number({
      minimum: 1,
      maximum: MAX_EXP,
      description: "the token's exp claim, copied as is: seconds since the epoch (JWT NumericDate). The revocation is kept until then.",
    }),
    user: Type.Optional(
      Type.String({
        ...ActorId,
        description: "the token's sub claim: only this user's token with the jti is refused. Without it, any token with the jti is (RFC 7519: a jti is unique per issuer).",
      }),
    ),
  },
  { additionalProperties: false },
)
export const TokenRevoked = t.Object({
  jti: t.String(),
  user: t.Optional(t.String({ description: 'the user whose token it is, when the request named one' })),
  expiresAt: t.String({ description: 'the revocation is kept until then, when the token expires anyway (ISO 8601): the later of `exp` and an `exp` the jti was already revoked with' }),
})
