import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { eq } from 'drizzle-orm'
import { apiKeys } from '../../../../core/db/schema'
import { mintUserToken } from '../../auth/mint'
import { createHarness, type ApiHarness } from '../../test-support'

const score = (player: string) => ({ type: 'score.submitted', data: { board: 'keys', player, score: 1 } })
const chat = { type: 'chat.message.posted', data: { room: 'lobby', user: 'game-server', text: 'gg' } }

/** /admin/keys in-process: create, list, revoke, scopes, and keys used as Bearer tokens on REST. */
describe('/admin/keys', () => {
  let h: ApiHarness
  beforeAll(async () => {
    h = await createHarness()
  })
  afterAll(async () => {
    await h.close()
  })

  const create = async (scopes: string[], extra: Record<string, unknown> = {}, token = h.adminToken) => {
    const r = await h.call('POST', '/admin/keys', { token, body: { name: `key for ${scopes.join(' ')}`, scopes, ...extra } })
    expect([r.status, r.json]).toMatchObject([201, {}])
    return r.json as { id: string; key: string; name: string; scopes: string[]; createdAt: string; expiresAt: string | null }
  }

  test('create answers 201 with the secret once; the list and the database never hold it', async () => {
    const r = await h.call('POST', '/admin/keys', { token: h.adminToken, body: { name: 'match server eu-1', scopes: ['publish:score.submitted', 'admin:read'] } })
    expect(r.status).toBe(201)
    expect(Object.keys(r.json).sort()).toEqual(['createdAt', 'expiresAt', 'id', 'key', 'name', 'scopes'])
    expect(r.json).toMatchObject({ name: 'match server eu-1', scopes: ['publish:score.submitted', 'admin:read'], expiresAt: null })
    expect(r.json.id).toMatch(/^key_[0-9a-f]{16}$/)
    expect(r.json.key).toMatch(/^ffk_/)
    expect(Date.parse(r.json.createdAt)).toBeGreaterThan(Date.now() - 60_000)

    const list = await h.call('GET', '/admin/keys', { token: h.adminToken })
    expect(list.status).toBe(200)
    const listed = list.json.keys.find((k: any) => k.id === r.json.id)
    expect(listed).toEqual({ ...r.json, key: undefined, createdBy: 'admin', revokedAt: null, lastUsedAt: null })
    expect(JSON.stringify(list.json)).not.toContain(r.json.key)
    const [row] = await h.database.db.select().from(apiKeys).where(eq(apiKeys.id, r.json.id))
    expect(JSON.stringify(row)).not.toContain(r.json.key)
    expect(row.digest).toBe(new Bun.CryptoHasher('sha256').update(r.json.key).digest('hex'))
  })

  test('scopes other than publish:* / publish:<type keys may publish> / admin:read / admin:write are 422, naming the scope', async () => {
    for (const scopes of [['publish:nope'], ['admin'], ['publish:score.submitted', 'admin:delete'], ['publish:chat.message.deleted'], ['*']]) {
      const r = await h.call('POST', '/admin/keys', { token: h.adminToken, body: { name: 'bad', scopes } })
      const bad = scopes.find((s) => !['publish:score.submitted'].includes(s))!
      expect([scopes, r.status, r.json.error.code]).toEqual([scopes, 422, 'invalid_request'])
      expect(r.json.error.message).toContain(JSON.stringify(bad))
      expect(r.json.error.details[0].path).toBe(`/scopes/${scopes.indexOf(bad)}`)
    }
    for (const body of [
      { name: 'no scopes', scopes: [] },
      { scopes: ['publish:*'] },
      { name: '', scopes: ['publish:*'] },
      { name: 'x', scopes: 'publish:*' },
      { name: 'x', scopes: ['publish:*'], expiresAt: 'next week' },
      { name: 'x', scopes: ['publish:*'], expiresAt: new Date(Date.now() - 1000).toISOString() },
    ]) {
      const r = await h.call('POST', '/admin/keys', { token: h.adminToken, body })
      expect([body, r.status, r.json.error?.code]).toEqual([body, 422, 'invalid_request'])
    }
    const keys = await h.call('GET', '/admin/keys', { token: h.adminToken })
    expect(keys.json.keys.filter((k: any) => k.name === 'bad' || k.name === 'x' || k.name === 'no scopes')).toEqual([])
  })

  test('a key is a Bearer token on REST with exactly its scopes; lastUsedAt records its use', async () => {
    const scorer = await create(['publish:score.submitted'])
    expect((await h.call('POST', '/v1/events', { token: scorer.key, body: score('p1') })).status).toBe(202)
    const denied = await h.call('POST', '/v1/events', { token: scorer.key, body: chat })
    expect([denied.status, denied.json.error.code]).toEqual([403, 'forbidden'])
    const any = await create(['publish:*'])
    expect((await h.call('POST', '/v1/events', { token: any.key, body: chat })).status).toBe(202)

    await h.deps.security.keys.flushUsage()
    const list = (await h.call('GET', '/admin/keys', { token: h.adminToken })).json.keys
    for (const id of [scorer.id, any.id]) expect(Date.parse(list.find((k: any) => k.id === id).lastUsedAt)).toBeGreaterThan(Date.now() - 60_000)
  })

  test('a key with only publish:* is 403 on /admin; admin:read lists but does not change; admin:write does both', async () => {
    const publisher = await create(['publish:*'])
    const reader = await create(['admin:read'])
    const writer = await create(['admin:write'])
    const user = await mintUserToken(h.env.vars.FANFARE_JWT_SECRET, { sub: 'alice', roles: ['moderator'] })
    const routes: [string, string, unknown?][] = [
      ['GET', '/admin/keys'],
      ['POST', '/admin/keys', { name: 'n', scopes: ['publish:*'] }],
      ['DELETE', `/admin/keys/${reader.id}`],
      ['GET', '/admin/audit'],
      ['POST', '/admin/users/bob/revoke'],
      ['POST', '/admin/users/revoke', { user: 'bob' }],
      ['POST', '/admin/tokens/revoke', { jti: 'j', exp: 2_000_000_000 }],
      ['GET', '/admin/projections'],
      ['PUT', '/admin/leaderboards/b', { order: 'asc' }],
    ]
    for (const token of [publisher.key, user]) {
      for (const [method, path, body] of routes) {
        const r = await h.call(method, path, { token, body })
        expect([method, path, r.status, r.json.error?.code]).toEqual([method, path, 403, 'forbidden'])
      }
    }
    for (const [method, path, body] of routes) {
      const r = await h.call(method, path, { body })
      expect([method, path, r.status]).toEqual([method, path, 401])
    }
    expect((await h.call('GET', '/admin/keys', { token: reader.key })).status).toBe(200)
    expect((await h.call('GET', '/admin/audit', { token: reader.key })).status).toBe(200)
    for (const [method, path, body] of routes.filter(([m]) => m !== 'GET')) {
      const r = await h.call(method, path, { token: reader.key, body })
      expect([method, path, r.status]).toEqual([method, path, 403])
    }
    const made = await create(['publish:score.submitted'], {}, writer.key)
    expect((await h.call('GET', '/admin/keys', { token: writer.key })).json.keys.find((k: any) => k.id === made.id).createdBy).toBe(`k:${writer.id}`)
    expect((await h.call('DELETE', `/admin/keys/${made.id}`, { token: writer.key })).status).toBe(200)
  })

  test('a revoked key is refused with 401 revoked at once; revoking again is 200, an unknown key 404', async () => {
    const k = await create(['publish:*'])
    expect((await h.call('POST', '/v1/events', { token: k.key, body: score('p2') })).status).toBe(202)
    const del = await h.call('DELETE', `/admin/keys/${k.id}`, { token: h.adminToken })
    expect(del.status).toBe(200)
    expect(del.json).toMatchObject({ id: k.id, name: k.name })
    expect(Date.parse(del.json.revokedAt)).toBeGreaterThan(Date.now() - 60_000)
    expect(del.json.key).toBeUndefined()
    const refused = await h.call('POST', '/v1/events', { token: k.key, body: score('p2') })
    expect([refused.status, refused.json.error.code]).toEqual([401, 'revoked'])
    const again = await h.call('DELETE', `/admin/keys/${k.id}`, { token: h.adminToken })
    expect([again.status, again.json.revokedAt]).toEqual([200, del.json.revokedAt])
    const unknown = await h.call('DELETE', '/admin/keys/key_0000000000000000', { token: h.adminToken })
    expect([unknown.status, unknown.json.error.code]).toEqual([404, 'unknown_key'])
    // An id no key could have (a NUL reached Postgres: a 500) is 422 naming it.
    const nul = await h.call('DELETE', '/admin/keys/key_%00', { token: h.adminToken })
    expect([nul.status, nul.json.error.code, nul.json.error.details[0].path]).toEqual([422, 'invalid_request', '/id'])
  })

  test('an expiresAt that names no storable instant is 422 naming it (not a 500, nor a day rolled over)', async () => {
    for (const expiresAt of ['9999-12-31T23:59:59-14:00', '2030-02-30T00:00:00Z', '2030-01-01T24:00:00Z']) {
      const r = await h.call('POST', '/admin/keys', { token: h.adminToken, body: { name: 'odd date', scopes: ['admin:read'], expiresAt } })
      expect([expiresAt, r.status, r.json.error?.code, r.json.error?.details?.[0]?.path]).toEqual([expiresAt, 422, 'invalid_request', '/expiresAt'])
    }
    const far = await h.call('POST', '/admin/keys', { token: h.adminToken, body: { name: 'far', scopes: ['admin:read'], expiresAt: '9999-12-31T23:59:59Z' } })
    expect([far.status, far.json.expiresAt]).toEqual([201, '9999-12-31T23:59:59.000Z'])
  })

  test('a key with an expiry works until then and is refused after', async () => {
    const k = await create(['publish:*'], { expiresAt: new Date(Date.now() + 1500).toISOString() })
    expect(Date.parse(k.expiresAt!)).toBeGreaterThan(Date.now())
    expect((await h.call('POST', '/v1/events', { token: k.key, body: score('p3') })).status).toBe(202)
    await Bun.sleep(Date.parse(k.expiresAt!) - Date.now() + 50)
    expect((await h.call('POST', '/v1/events', { token: k.key, body: score('p3') })).status).toBe(401)
  })
})
