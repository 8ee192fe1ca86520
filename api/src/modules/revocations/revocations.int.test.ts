import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { and, eq } from 'drizzle-orm'
import { tokenRevocations, userRevocations } from '../../../../core/db/schema'
import { mintUserToken } from '../../auth/mint'
import { createHarness, type ApiHarness } from '../../test-support'

const chat = (user: string) => ({ type: 'chat.message.posted', data: { room: 'lobby', user, text: 'hi' } })
const secondsAgo = (s: number) => Math.floor(Date.now() / 1000) - s

/** The revocation routes in-process, over REST (sockets on two nodes: test/revocation). */
describe('POST /admin/users/:user/revoke and /admin/tokens/revoke', () => {
  let h: ApiHarness
  let mint: (sub: string, opts?: { issuedAt?: number; jti?: string; ttlSeconds?: number }) => Promise<string>
  beforeAll(async () => {
    h = await createHarness()
    mint = (sub, opts = {}) => mintUserToken(h.env.vars.FANFARE_JWT_SECRET, { sub, issuedAt: secondsAgo(10), ...opts })
  })
  afterAll(async () => {
    await h.close()
  })
  const post = (token: string, user: string) => h.call('POST', '/v1/events', { token, body: chat(user) })

  test("revoking a user refuses every token issued up to now, and only that user's", async () => {
    const alice = await mint('alice')
    const bob = await mint('bob')
    expect((await post(alice, 'alice')).status).toBe(202)
    const r = await h.call('POST', '/admin/users/alice/revoke', { token: h.adminToken })
    expect(r.status).toBe(200)
    expect(r.json.user).toBe('alice')
    const before = Date.parse(r.json.revokedBefore)
    expect(Math.abs(before - Date.now())).toBeLessThan(5_000)
    const refused = await post(alice, 'alice')
    expect([refused.status, refused.json.error.code]).toEqual([401, 'revoked'])
    // Issued in the revocation's second: iat counts whole seconds, so it is refused too.
    expect((await post(await mint('alice', { issuedAt: Math.floor(before / 1000) }), 'alice')).status).toBe(401)
    expect((await post(await mint('alice', { issuedAt: Math.floor(before / 1000) + 1 }), 'alice')).status).toBe(202)
    expect((await post(bob, 'bob')).status).toBe(202)
    const rows = await h.database.db.select().from(userRevocations)
    expect(rows.map((row) => [row.userId, row.revokedBefore.toISOString(), row.revokedBy])).toEqual([['alice', r.json.revokedBefore, 'admin']])
  })

  test('a user named in the body: any sub, `.` and `..` included (a URL path cannot carry them), is revoked like one in the path', async () => {
    for (const sub of ['.', '..']) {
      const token = await mint(sub)
      expect((await post(token, sub)).status).toBe(202)
      const r = await h.call('POST', '/admin/users/revoke', { token: h.adminToken, body: { user: sub } })
      expect([r.status, r.json.user]).toEqual([200, sub])
      const refused = await post(token, sub)
      expect([refused.status, refused.json.error.code]).toEqual([401, 'revoked'])
    }
  })

  test('revoking a token by jti refuses that token only, until its exp', async () => {
    const exp = secondsAgo(-3600)
    const revoked = await mintUserToken(h.env.vars.FANFARE_JWT_SECRET, { sub: 'carol', jti: 'carol-phone', issuedAt: exp - 3600, ttlSeconds: 3600 })
    const other = await mint('carol', { jti: 'carol-laptop' })
    expect((await post(revoked, 'carol')).status).toBe(202)
    const r = await h.call('POST', '/admin/tokens/revoke', { token: h.adminToken, body: { jti: 'carol-phone', exp } })
    expect([r.status, r.json]).toEqual([200, { jti: 'carol-phone', expiresAt: new Date(exp * 1000).toISOString() }])
    const refused = await post(revoked, 'carol')
    expect([refused.status, refused.json.error.code]).toEqual([401, 'revoked'])
    expect((await post(other, 'carol')).status).toBe(202)
    const [row] = await h.database.db.select().from(tokenRevocations)
    expect([row.jti, row.expiresAt.getTime(), row.revokedBy]).toEqual(['carol-phone', exp * 1000, 'admin'])
  })

  test("revoking a jti for a named user refuses that user's token only: another user's token reusing the jti (a non-conforming auth service) keeps working; a bare jti stays global", async () => {
    const exp = secondsAgo(-3600)
    const erin = await mint('erin', { jti: 'reused-jti' })
    const finn = await mint('finn', { jti: 'reused-jti' })
    const r = await h.call('POST', '/admin/tokens/revoke', { token: h.adminToken, body: { jti: 'reused-jti', exp, user: 'erin' } })
    expect([r.status, r.json]).toEqual([200, { jti: 'reused-jti', user: 'erin', expiresAt: new Date(exp * 1000).toISOString() }])
    const refused = await post(erin, 'erin')
    expect([refused.status, refused.json.error.code]).toEqual([401, 'revoked'])
    expect((await post(finn, 'finn')).status).toBe(202)
    // Erin's other tokens are hers to keep.
    expect((await post(await mint('erin', { jti: 'erin-other' }), 'erin')).status).toBe(202)
    const [row] = await h.database.db.select().from(tokenRevocations).where(eq(tokenRevocations.jti, 'reused-jti'))
    expect([row.jti, row.userId, row.expiresAt.getTime()]).toEqual(['reused-jti', 'erin', exp * 1000])
    // Without a user, the jti is refused whoever's token carries it (RFC 7519: unique per issuer).
    expect((await h.call('POST', '/admin/tokens/revoke', { token: h.adminToken, body: { jti: 'reused-jti', exp } })).status).toBe(200)
    const both = await post(finn, 'finn')
    expect([both.status, both.json.error.code]).toEqual([401, 'revoked'])
  })

  test('revoking a jti again with an earlier exp answers (and audits) the later exp that is kept, not the one asked for', async () => {
    const later = secondsAgo(-7200)
    const earlier = secondsAgo(-60)
    for (const user of [undefined, 'gus']) {
      const named = user === undefined ? {} : { user }
      const first = await h.call('POST', '/admin/tokens/revoke', { token: h.adminToken, body: { jti: 'kept-jti', exp: later, ...named } })
      expect([first.status, first.json]).toEqual([200, { jti: 'kept-jti', ...named, expiresAt: new Date(later * 1000).toISOString() }])
      const again = await h.call('POST', '/admin/tokens/revoke', { token: h.adminToken, body: { jti: 'kept-jti', exp: earlier, ...named } })
      expect([again.status, again.json]).toEqual([200, { jti: 'kept-jti', ...named, expiresAt: new Date(later * 1000).toISOString() }])
      const [row] = await h.database.db.select().from(tokenRevocations).where(and(eq(tokenRevocations.jti, 'kept-jti'), eq(tokenRevocations.userId, user ?? '')))
      expect(row.expiresAt.getTime()).toBe(later * 1000)
    }
    const audited = (await h.call('GET', '/admin/audit?action=token.revoked&limit=4', { token: h.adminToken })).json.entries
    expect(audited.filter((e: any) => e.target === 'token:kept-jti').map((e: any) => e.details.expiresAt)).toEqual(Array(4).fill(new Date(later * 1000).toISOString()))
  })

  test('a token whose exp has a fraction (a NumericDate may) is revoked with its exp copied as is', async () => {
    const issuedAt = secondsAgo(10)
    const token = await mintUserToken(h.env.vars.FANFARE_JWT_SECRET, { sub: 'dave', jti: 'dave-py', issuedAt, ttlSeconds: 3600.25 })
    const exp = JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString()).exp
    expect(exp).toBe(issuedAt + 3600.25)
    expect((await post(token, 'dave')).status).toBe(202)
    const r = await h.call('POST', '/admin/tokens/revoke', { token: h.adminToken, body: { jti: 'dave-py', exp } })
    expect([r.status, r.json]).toEqual([200, { jti: 'dave-py', expiresAt: new Date(exp * 1000).toISOString() }])
    const refused = await post(token, 'dave')
    expect([refused.status, refused.json.error.code]).toEqual([401, 'revoked'])
  })

  test('bad input is 422 and revokes nothing', async () => {
    const bodies: unknown[] = [
      {},
      { jti: 'x' },
      { exp: 2_000_000_000 },
      { jti: '', exp: 2_000_000_000 },
      { jti: 'x', exp: new Date(2_000_000_000_000).toISOString() },
      { jti: 'x', exp: -1 },
      { jti: 'x'.repeat(129), exp: 2_000_000_000 },
      // Postgres cannot store a NUL (this was a 500), and stores a lone surrogate as U+FFFD (this
      // was a 200 whose revocation, read back after a restart, refused another jti than the one named).
      { jti: 'x\u0000y', exp: 2_000_000_000 },
      { jti: 'x\ud800', exp: 2_000_000_000 },
      { jti: 'x', exp: 2_000_000_000, user: '' },
      { jti: 'x', exp: 2_000_000_000, user: 'two words' },
    ]
    for (const body of bodies) {
      const r = await h.call('POST', '/admin/tokens/revoke', { token: h.adminToken, body })
      expect([body, r.status, r.json.error?.code]).toEqual([body, 422, 'invalid_request'])
    }
    // exp is the token's claim, a number: the error says what is wrong with it, never "Expected
    // string" (a numeric string is not a NumericDate either).
    for (const [exp, says] of [[-1, 'greater or equal to 1'], [1e300, 'less or equal'], ['2000000000', 'number'], [null, 'number']] as const) {
      const r = await h.call('POST', '/admin/tokens/revoke', { token: h.adminToken, body: { jti: 'x', exp } })
      expect([exp, r.status, r.json.error.details]).toEqual([exp, 422, [{ path: '/exp', message: expect.stringContaining(says), in: 'body' }]])
    }
    const user = await h.call('POST', `/admin/users/${encodeURIComponent('two words')}/revoke`, { token: h.adminToken })
    expect([user.status, user.json.error?.code]).toEqual([422, 'invalid_request'])
    // The user in the body: the same rules as a token's sub.
    for (const body of [{}, { user: '' }, { user: 'two words' }, { user: 'x'.repeat(129) }, { user: 'x\ud800' }, { user: 7 }, { user: 'x', who: 'y' }]) {
      const r = await h.call('POST', '/admin/users/revoke', { token: h.adminToken, body })
      expect([body, r.status, r.json.error?.code]).toEqual([body, 422, 'invalid_request'])
    }
    expect((await h.database.db.select().from(userRevocations)).map((row) => row.userId).filter((u) => !['alice', '.', '..'].includes(u))).toEqual([])
    const tokens = await h.database.db.select().from(tokenRevocations)
    expect(tokens.map((t) => t.jti).filter((j) => j.startsWith('x'))).toEqual([])
  })
})
