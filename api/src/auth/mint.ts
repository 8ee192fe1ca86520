import { randomUUID } from 'node:crypto'
import { SignJWT } from 'jose'

/**
 * Mints an HS256 user token the way a game's own auth service would: for `npm start`'s demo user,
 * `npm run token`, and tests. A real deployment mints tokens in its own backend (see the README's
 * Security section); Fanfare only verifies them.
 */
export async function mintUserToken(
  secret: string,
  claims: { sub: string; ttlSeconds?: number; name?: string; roles?: string[]; channels?: string[]; jti?: string; issuer?: string; audience?: string; issuedAt?: number },
): Promise<string> {
  const iat = claims.issuedAt ?? Math.floor(Date.now() / 1000)
  const jwt = new SignJWT({
    ...(claims.name ? { name: claims.name } : {}),
    ...(claims.roles ? { roles: claims.roles } : {}),
    ...(claims.channels ? { channels: claims.channels } : {}),
  })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setSubject(claims.sub)
    .setIssuedAt(iat)
    .setExpirationTime(iat + (claims.ttlSeconds ?? 3600))
    .setJti(claims.jti ?? randomUUID())
  if (claims.issuer) jwt.setIssuer(claims.issuer)
  if (claims.audience) jwt.setAudience(claims.audience)
  return jwt.sign(new TextEncoder().encode(secret))
}
