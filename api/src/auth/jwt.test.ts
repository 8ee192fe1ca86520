import { afterAll, describe, expect, test } from 'bun:test'
import { exportJWK, generateKeyPair, SignJWT, type JWK } from 'jose'
import { createJwtVerifier } from './jwt'
import { mintUserToken } from './mint'

const SECRET = 'a-secret-of-at-least-32-bytes-long!!'
const hs = createJwtVerifier({ FANFARE_JWT_SECRET: SECRET })!

const codeOf = (p: Promise<unknown>) => p.then(() => 'ok', (err) => (err as { code?: string }).code)

/** A JWKS endpoint the test controls: keys can be added while it runs (rotation). */
function jwksServer() {
  const keys: JWK[] = []
  let fetches = 0
  const server = Bun.serve({
    port: 0,
    hostname: '127.0.0.1',
    fetch: () => (fetches++, Response.json({ keys })),
  })
  return { url: `http://127.0.0.1:${server.port}/jwks.json`, keys, fetches: () => fetches, stop: () => server.stop(true) }
}

describe('user tokens (HS256 with FANFARE_JWT_SECRET)', () => {
  test('a valid token gives the user: sub, name, roles, channels, expiry, iat and jti', async () => {
    const token = await mintUserToken(SECRET, { sub: 'alice', name: 'Alice', roles: ['moderator'], channels: ['chat:vip-*'], ttlSeconds: 60, jti: 'j1' })
    const user = await hs(token)
    expect(user).toMatchObject({ kind: 'user', id: 'alice', name: 'Alice', roles: ['moderator'], channels: ['chat:vip-*'], jti: 'j1' })
    expect(user.expiresAt - Date.now()).toBeGreaterThan(55_000)
    expect(user.issuedAt).toBeLessThanOrEqual(Date.now())
  })

  test('expired is token_expired; a wrong signature, a tampered payload or garbage is invalid_token', async () => {
    expect(await codeOf(hs(await mintUserToken(SECRET, { sub: 'a', issuedAt: Math.floor(Date.now() / 1000) - 3600, ttlSeconds: 60 })))).toBe('token_expired')
    expect(await codeOf(hs(await mintUserToken('another-secret-of-32-bytes-or-more!!', { sub: 'a' })))).toBe('invalid_token')
    const [h, , s] = (await mintUserToken(SECRET, { sub: 'a' })).split('.')
    const forged = Buffer.from(JSON.stringify({ sub: 'admin', exp: Math.floor(Date.now() / 1000) + 60 })).toString('base64url')
    expect(await codeOf(hs(`${h}.${forged}.${s}`))).toBe('invalid_token')
    for (const junk of ['', 'abc', 'a.b.c', 'x'.repeat(5000)]) expect(await codeOf(hs(junk))).toBe('invalid_token')
  })

  test('alg none and algorithms outside the allowlist are refused', async () => {
    const none = `${Buffer.from(JSON.stringify({ alg: 'none', typ: 'JWT' })).toString('base64url')}.${Buffer.from(JSON.stringify({ sub: 'a', exp: 9999999999 })).toString('base64url')}.`
    expect(await codeOf(hs(none))).toBe('invalid_token')
    const hs512 = await new SignJWT({}).setProtectedHeader({ alg: 'HS512' }).setSubject('a').setExpirationTime('1h').sign(new TextEncoder().encode(SECRET))
    expect(await codeOf(hs(hs512))).toBe('invalid_token')
  })

  test('sub and exp are required; claims of the wrong shape are refused', async () => {
    const sign = (claims: Record<string, unknown>) => new SignJWT(claims).setProtectedHeader({ alg: 'HS256' }).sign(new TextEncoder().encode(SECRET))
    const exp = Math.floor(Date.now() / 1000) + 60
    expect(await codeOf(hs(await sign({ exp })))).toBe('invalid_token')
    expect(await codeOf(hs(await sign({ sub: 'a' })))).toBe('invalid_token')
    expect(await codeOf(hs(await sign({ sub: 'has space', exp })))).toBe('invalid_token')
    expect(await codeOf(hs(await sign({ sub: 'a', exp, roles: 'moderator' })))).toBe('invalid_token')
    expect(await codeOf(hs(await sign({ sub: 'a', exp, name: 'bell\u0007' })))).toBe('invalid_token')
    expect(await codeOf(hs(await sign({ sub: 'a', exp })))).toBe('ok')
  })

  test('a token issued in the future (iat past the clock tolerance) is refused: user revocation, by iat, could never reach it', async () => {
    const now = Math.floor(Date.now() / 1000)
    const sign = (iat: number) => new SignJWT({}).setProtectedHeader({ alg: 'HS256' }).setSubject('a').setIssuedAt(iat).setExpirationTime(now + 3600).sign(new TextEncoder().encode(SECRET))
    // POST /admin/users/:user/revoke refuses tokens with iat at or before the revocation: one
    // claiming to be issued next month would outlive every revocation of its user until then.
    expect(await codeOf(hs(await sign(now + 30 * 86_400)))).toBe('invalid_token')
    expect(await codeOf(hs(await sign(now + 60)))).toBe('invalid_token')
    // Within the 5 s tolerance granted to exp and nbf (clocks of two machines), and in the past: fine.
    expect(await codeOf(hs(await sign(now + 3)))).toBe('ok')
    expect(await codeOf(hs(await sign(now - 60)))).toBe('ok')
  })

  test('issuer and audience are checked when configured', async () => {
    const strict = createJwtVerifier({ FANFARE_JWT_SECRET: SECRET, FANFARE_JWT_ISSUER: 'https://auth.game', FANFARE_JWT_AUDIENCE: 'fanfare' })!
    expect(await codeOf(strict(await mintUserToken(SECRET, { sub: 'a', issuer: 'https://auth.game', audience: 'fanfare' })))).toBe('ok')
    expect(await codeOf(strict(await mintUserToken(SECRET, { sub: 'a', issuer: 'https://evil', audience: 'fanfare' })))).toBe('invalid_token')
    expect(await codeOf(strict(await mintUserToken(SECRET, { sub: 'a', issuer: 'https://auth.game' })))).toBe('invalid_token')
  })

  test('nothing configured: no verifier (user tokens are refused by the authenticator)', () => {
    expect(createJwtVerifier({})).toBeUndefined()
  })
})

describe('user tokens from a JWKS (RS256, ES256, EdDSA)', () => {
  const jwks = jwksServer()
  afterAll(() => jwks.stop())
  const verify = createJwtVerifier({ FANFARE_JWKS_URL: jwks.url })!

  async function addKey(alg: 'RS256' | 'ES256' | 'EdDSA', kid: string) {
    const { publicKey, privateKey } = await generateKeyPair(alg, { crv: alg === 'EdDSA' ? 'Ed25519' : undefined, extractable: true })
    jwks.keys.push({ ...(await exportJWK(publicKey)), kid, alg, use: 'sig' })
    return (sub: string) => new SignJWT({}).setProtectedHeader({ alg, kid }).setSubject(sub).setIssuedAt().setExpirationTime('5m').sign(privateKey)
  }

  test('each algorithm verifies with its key from the set', async () => {
    const signers = []
    for (const alg of ['RS256', 'ES256', 'EdDSA'] as const) signers.push([alg, await addKey(alg, `k-${alg}`)] as const)
    for (const [alg, sign] of signers) expect((await verify(await sign(`user-${alg}`))).id).toBe(`user-${alg}`)
  })

  test('a token naming a kid the cached set lacks makes the set be fetched again (key rotation)', async () => {
    // jose refetches on an unknown kid at most once per cooldown (30 s by default, so that tokens
    // with made-up kids cannot hammer the auth server); here without one.
    const rotating = createJwtVerifier({ FANFARE_JWKS_URL: jwks.url }, { jwksCooldownMs: 0 })!
    expect((await rotating(await (await addKey('ES256', 'before'))('a'))).id).toBe('a')
    const fetched = jwks.fetches()
    const rotated = await addKey('ES256', 'rotated-in')
    expect((await rotating(await rotated('b'))).id).toBe('b')
    expect(jwks.fetches()).toBe(fetched + 1)
  })

  test('an HS256 token is refused when only a JWKS is configured (no algorithm confusion)', async () => {
    // Signed with a public key's bytes as an HMAC secret: the classic confusion attack.
    const pub = JSON.stringify(jwks.keys[0])
    const forged = await new SignJWT({}).setProtectedHeader({ alg: 'HS256', kid: jwks.keys[0].kid }).setSubject('admin').setExpirationTime('5m').sign(new TextEncoder().encode(pub))
    expect(await codeOf(verify(forged))).toBe('invalid_token')
  })

  test('a token signed by a key not in the set is refused', async () => {
    const { privateKey } = await generateKeyPair('ES256')
    const stranger = await new SignJWT({}).setProtectedHeader({ alg: 'ES256', kid: 'k-ES256' }).setSubject('x').setExpirationTime('5m').sign(privateKey)
    expect(await codeOf(verify(stranger))).toBe('invalid_token')
  })
})
