import { describe, expect, test } from 'bun:test'
import { loadConfig } from '../../../core/config'
import { Revoked, TokenExpired, Unauthorized } from '../errors'
import { createAuthenticator } from './authenticate'
import { createJwtVerifier } from './jwt'
import { mintUserToken } from './mint'
import type { Principal } from './principal'

const SECRET = 'a-secret-of-at-least-32-bytes-long!!'
const ADMIN = 'admin-token-0123456789'
const INGEST = 'ingest-token-0123456789'

function authenticator(revoked: string[] = []) {
  const lookups: string[] = []
  const auth = createAuthenticator({
    config: { FANFARE_ADMIN_TOKEN: ADMIN, FANFARE_INGEST_TOKEN: INGEST },
    // Keys live in Postgres (keys.int.test.ts); here the one that exists is `ffk_known`.
    keys: {
      lookup: async (secret) => {
        lookups.push(secret)
        return secret === 'ffk_known' ? { kind: 'key', id: 'key_1', name: 'game server', scopes: ['publish:*'] } : undefined
      },
    },
    jwt: createJwtVerifier({ FANFARE_JWT_SECRET: SECRET }),
    revocations: { isRevoked: (p: Principal) => p.kind === 'user' && revoked.includes(p.id) },
  })
  return { auth, lookups }
}

const codeOf = (f: () => unknown) => Promise.resolve().then(f).then(() => 'ok', (err) => (err as Unauthorized).code)

describe('authenticate', () => {
  test('an HS256 user token is answered at once: the principal, or the refusal thrown (no promise to wait on)', async () => {
    const { auth } = authenticator(['bob'])
    const user = auth.authenticate(await mintUserToken(SECRET, { sub: 'alice' }))
    expect(user).not.toBeInstanceOf(Promise)
    expect(user).toMatchObject({ kind: 'user', id: 'alice' })
    const revoked = await mintUserToken(SECRET, { sub: 'bob' })
    expect(() => auth.authenticate(revoked)).toThrow(Revoked)
    const expired = await mintUserToken(SECRET, { sub: 'alice', issuedAt: Math.floor(Date.now() / 1000) - 3600, ttlSeconds: 60 })
    expect(() => auth.authenticate(expired)).toThrow(TokenExpired)
    const forged = await mintUserToken('another-secret-of-32-bytes-or-more!!', { sub: 'alice' })
    expect(() => auth.authenticate(forged)).toThrow(Unauthorized)
  })

  test('the bootstrap tokens and API keys are still told apart from user tokens', async () => {
    const { auth, lookups } = authenticator()
    expect(await auth.authenticate(ADMIN)).toMatchObject({ kind: 'key', root: 'admin' })
    expect(await auth.authenticate(INGEST)).toMatchObject({ kind: 'key', root: 'ingest' })
    expect(await auth.authenticate('ffk_known')).toMatchObject({ kind: 'key', id: 'key_1' })
    expect(await codeOf(() => auth.authenticate('ffk_unknown'))).toBe('invalid_token')
    expect(lookups).toEqual(['ffk_known', 'ffk_unknown'])
    // A bootstrap token with a character more, or a '.' anywhere, is a JWT to check, and not a good one.
    for (const near of [`${ADMIN}x`, `${ADMIN}.`, `${ADMIN}.a.b`, `a.${INGEST}`]) expect(await codeOf(() => auth.authenticate(near))).toBe('invalid_token')
  })

  test("a bootstrap token with a '.' is refused at start (a credential with one is never compared with them)", () => {
    expect(() => loadConfig({ FANFARE_ADMIN_TOKEN: 'admin.token.0123456789' })).toThrow(/FANFARE_ADMIN_TOKEN/)
    expect(() => loadConfig({ FANFARE_INGEST_TOKEN: 'ingest-token.0123456789' })).toThrow(/FANFARE_INGEST_TOKEN/)
    expect(loadConfig({ FANFARE_ADMIN_TOKEN: ADMIN, FANFARE_INGEST_TOKEN: INGEST }).FANFARE_ADMIN_TOKEN).toBe(ADMIN)
  })
})
