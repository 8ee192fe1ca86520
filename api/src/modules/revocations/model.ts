import { Type } from '@sinclair/typebox'
import { t } from 'elysia'
import { ActorId } from '../../../../core/events'
import { Jti, MAX_EXP } from '../../auth/jwt'

export const UserParams = t.Object({ user: ActorId })
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
  },
  { additionalProperties: false },
)
export const TokenRevoked = t.Object({
  jti: t.String(),
  expiresAt: t.String({ description: 'the revocation is kept until the token expires anyway (ISO 8601)' }),
})
