import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { sql } from 'drizzle-orm'
import { deadLetters } from '../../../../core/db/schema'
import { mintUserToken } from '../../auth/mint'
import { createHarness, type ApiHarness } from '../../test-support'

/** GET /admin/audit: every admin action, with who did it, when, what and on what. */
describe('/admin/audit', () => {
  let h: ApiHarness
  beforeAll(async () => {
    h = await createHarness()
  })
  afterAll(async () => {
    await h.close()
  })
  const audit = async (query = '', token = h.adminToken) => {
    const r = await h.call('GET', `/admin/audit${query}`, { token })
    expect(r.status).toBe(200)
    return r.json.entries as { id: number; at: string; actor: string; action: string; target: string; details: any }[]
  }
  const ok = async (method: string, path: string, token: string, body?: unknown) => {
    const r = await h.call(method, path, { token, body })
    // On failure, shows the error body.
    expect([method, path, r.status < 300 ? 'ok' : r.json]).toEqual([method, path, 'ok'])
    return r.json
  }

  test('each admin action is recorded once it succeeded, with its actor; failed ones are not', async () => {
    const start = Date.now()
    const writer = await ok('POST', '/admin/keys', h.adminToken, { name: 'ops bot', scopes: ['admin:write'] })
    const reader = await ok('POST', '/admin/keys', writer.key, { name: 'dashboard', scopes: ['admin:read'] })
    await ok('DELETE', `/admin/keys/${reader.id}`, writer.key)
    await ok('POST', '/admin/users/mallory/revoke', writer.key)
    await ok('POST', '/admin/tokens/revoke', writer.key, { jti: 'leaked-1', exp: 2_000_000_000 })
    await ok('PUT', '/admin/leaderboards/speedrun', writer.key, { order: 'asc' })
    await ok('PUT', '/admin/rooms/vip', writer.key, { visibility: 'private' })
    const moderator = await mintUserToken(h.env.vars.FANFARE_JWT_SECRET, { sub: 'mod-1', roles: ['moderator'] })
    const deleted = await ok('DELETE', '/admin/rooms/lobby/messages/m-42', moderator)
    const job = await ok('POST', '/admin/projections/chat/rebuild', writer.key)
    // Refused or failed: nothing recorded.
    expect((await h.call('PUT', '/admin/leaderboards/speedrun', { token: writer.key, body: { order: 'sideways' } })).status).toBe(422)
    expect((await h.call('DELETE', '/admin/keys/key_ffffffffffffffff', { token: writer.key })).status).toBe(404)
    expect((await h.call('POST', '/admin/projections/nope/rebuild', { token: writer.key })).status).toBe(404)
    expect((await h.call('DELETE', '/admin/rooms/lobby/messages/m-43', { token: await mintUserToken(h.env.vars.FANFARE_JWT_SECRET, { sub: 'pleb' }) })).status).toBe(403)

    const entries = await audit()
    const w = `k:${writer.id}`
    expect(entries.map((e) => [e.actor, e.action, e.target]).reverse()).toEqual([
      ['admin', 'key.created', `key:${writer.id}`],
      [w, 'key.created', `key:${reader.id}`],
      [w, 'key.revoked', `key:${reader.id}`],
      [w, 'user.revoked', 'user:mallory'],
      [w, 'token.revoked', 'token:leaked-1'],
      [w, 'board.configured', 'board:speedrun'],
      [w, 'room.visibility_set', 'room:vip'],
      ['u:mod-1', 'message.deleted', 'message:lobby/m-42'],
      [w, 'rebuild.requested', 'projection:chat'],
    ])
    const byAction = Object.fromEntries(entries.map((e) => [e.action + (e.target === `key:${writer.id}` ? ':writer' : ''), e.details]))
    expect(byAction['key.created']).toEqual({ name: 'dashboard', scopes: ['admin:read'], expiresAt: null })
    expect(byAction['key.revoked']).toMatchObject({ name: 'dashboard', alreadyRevoked: false })
    expect(byAction['token.revoked']).toEqual({ expiresAt: new Date(2_000_000_000_000).toISOString() })
    expect(byAction['board.configured']).toEqual({ set: { order: 'asc' }, order: 'asc', operator: 'best' })
    expect(byAction['room.visibility_set']).toEqual({ visibility: 'private' })
    expect(byAction['message.deleted']).toEqual({ eventId: deleted.results[0].id, seq: deleted.results[0].seq })
    expect(byAction['rebuild.requested']).toEqual({ job: job.id, force: false })
    // Secrets never reach the log.
    expect(JSON.stringify(entries)).not.toContain(writer.key)
    expect(JSON.stringify(entries)).not.toContain(reader.key)
    for (const e of entries) expect(Date.parse(e.at)).toBeGreaterThanOrEqual(start - 1000)
  })

  test('newest first, paged by id with before and limit 1-100', async () => {
    for (const room of ['p1', 'p2', 'p3', 'p4']) await ok('PUT', `/admin/rooms/${room}`, h.adminToken, { visibility: 'public' })
    const all = await audit('?limit=100')
    const ids = all.map((e) => e.id)
    expect(ids).toEqual([...ids].sort((a, b) => b - a))
    const first = await audit('?limit=3')
    expect(first.map((e) => e.target)).toEqual(['room:p4', 'room:p3', 'room:p2'])
    const next = await audit(`?limit=3&before=${first.at(-1)!.id}`)
    expect(next.map((e) => e.id)).toEqual(ids.slice(3, 6))
    for (const q of ['?limit=0', '?limit=101', '?before=0', '?before=x']) {
      const r = await h.call('GET', `/admin/audit${q}`, { token: h.adminToken })
      expect([q, r.status, r.json.error.code]).toEqual([q, 422, 'invalid_request'])
    }
  })

  test('action keeps only the actions asked for, however many others came after them', async () => {
    await ok('POST', '/admin/users/old-news/revoke', h.adminToken)
    for (let i = 0; i < 105; i++) await ok('PUT', `/admin/rooms/busy-${i}`, h.adminToken, { visibility: 'public' })
    expect((await audit('?limit=100')).some((e) => e.target === 'user:old-news')).toBe(false)
    const revocations = await audit('?limit=100&action=user.revoked,token.revoked,key.revoked')
    expect(revocations.length).toBeGreaterThan(0)
    expect(revocations.every((e) => ['user.revoked', 'token.revoked', 'key.revoked'].includes(e.action))).toBe(true)
    expect(revocations[0].target).toBe('user:old-news')
    for (const q of ['?action=user.revoked,', '?action=user.deleted', '?action=user.revoked;drop']) {
      const r = await h.call('GET', `/admin/audit${q}`, { token: h.adminToken })
      expect([q, r.status, r.json.error.code]).toEqual([q, 422, 'invalid_request'])
    }
  })

  test('when the audit write fails the action stands, the caller gets 503 audit_failed, and a repeat records it', async () => {
    await h.database.db.execute(sql`ALTER TABLE audit_log RENAME TO audit_log_away`)
    let r
    try {
      r = await h.call('PUT', '/admin/rooms/outage', { token: h.adminToken, body: { visibility: 'private' } })
    } finally {
      await h.database.db.execute(sql`ALTER TABLE audit_log_away RENAME TO audit_log`)
    }
    expect([r.status, r.json.error.code]).toEqual([503, 'audit_failed'])
    expect((await h.call('GET', '/admin/rooms/outage', { token: h.adminToken })).json.visibility).toBe('private')
    expect((await audit()).filter((e) => e.target === 'room:outage')).toEqual([])
    await ok('PUT', '/admin/rooms/outage', h.adminToken, { visibility: 'private' })
    expect((await audit()).filter((e) => e.target === 'room:outage').map((e) => e.action)).toEqual(['room.visibility_set'])
  })

  // The job lives in NATS, outside the entry's transaction: the job stood, the answer was 503
  // audit_failed, and the repeat was 409 rebuild_in_progress, so the request was recorded nowhere.
  test('a rebuild request is recorded with its job or not requested: when the entry cannot be written no job is stored, and the repeat requests and records it', async () => {
    await h.database.db.execute(sql.raw(`
      CREATE FUNCTION audit_refuses() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'read-only' USING ERRCODE = '25006'; END $$;
      CREATE TRIGGER audit_refuses BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION audit_refuses();`))
    let r
    try {
      r = await h.call('POST', '/admin/projections/polls/rebuild', { token: h.adminToken })
    } finally {
      await h.database.db.execute(sql.raw('DROP TRIGGER audit_refuses ON audit_log; DROP FUNCTION audit_refuses();'))
    }
    expect([r.status, r.json.error.code]).toEqual([503, 'database_unavailable'])
    const none = await h.call('GET', '/admin/projections/polls/rebuild', { token: h.adminToken })
    expect([none.status, none.json.error?.code]).toEqual([404, 'no_rebuild'])
    const job = await ok('POST', '/admin/projections/polls/rebuild', h.adminToken)
    expect((await audit()).filter((e) => e.target === 'projection:polls').map((e) => [e.action, e.details.job])).toEqual([['rebuild.requested', job.id]])
  })

  test('a discarded dead letter is recorded with its discard or not discarded: when the entry cannot be written nothing changes, and the repeat discards and records it', async () => {
    const [letter] = await h.database.db
      .insert(deadLetters)
      .values({ projection: 'chat', partition: 0, streamSeq: 7, subject: 'x.ev.0.chat.message.posted', eventId: 'gone-1', reason: 'invalid data', payload: '{}' })
      .returning({ id: deadLetters.id })
    // The audit write fails as in a failover (read-only: 25006), after the dead letter's delete.
    await h.database.db.execute(sql.raw(`
      CREATE FUNCTION audit_refuses() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'read-only' USING ERRCODE = '25006'; END $$;
      CREATE TRIGGER audit_refuses BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION audit_refuses();`))
    let r
    try {
      r = await h.call('DELETE', `/admin/dead-letters/${letter.id}`, { token: h.adminToken })
    } finally {
      await h.database.db.execute(sql.raw('DROP TRIGGER audit_refuses ON audit_log; DROP FUNCTION audit_refuses();'))
    }
    expect([r.status, r.json.error.code]).toEqual([503, 'database_unavailable'])
    const listed = await h.call('GET', '/admin/dead-letters', { token: h.adminToken })
    expect(listed.json.deadLetters.map((d: { id: number }) => d.id)).toContain(letter.id)
    const again = await ok('DELETE', `/admin/dead-letters/${letter.id}`, h.adminToken)
    expect(again).toMatchObject({ id: letter.id, eventId: 'gone-1' })
    expect((await audit()).filter((e) => e.target === `dead_letter:${letter.id}`).map((e) => [e.action, e.details.reason])).toEqual([['dead_letter.discarded', 'invalid data']])
  })
})
