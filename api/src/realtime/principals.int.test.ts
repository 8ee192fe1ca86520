import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import type { TestEnv } from '../../../core/testing/env'
import { until, WsClient } from '../../../test/e2e/harness'
import { createKeyStore } from '../auth/keys'
import { mintUserToken } from '../auth/mint'
import type { RunningApi } from '../server'
import { startTestNode, UPGRADE_HEADERS, type TestNode } from '../test-support'
import { CLOSE } from './close-codes'

/**
 * Principals on a real API node: users from JWTs (at the upgrade or in an auth frame), keys, and
 * anonymous viewers; what each may publish and subscribe to; token expiry and refresh on an open
 * socket; private rooms and user channels; admin scopes. Every denial is explicit.
 */
describe('principals over a real API node', () => {
  let node: TestNode
  let env: TestEnv
  let base: string
  let ws: string
  let adminKey: string
  let readKey: string

  beforeAll(async () => {
    node = await startTestNode({ FANFARE_TOKEN_WARNING_MS: '3000' })
    ;({ env, base, wsUrl: ws } = node)
    const keys = createKeyStore({ db: node.database.db })
    adminKey = (await keys.create({ name: 'ops', scopes: ['admin:read', 'admin:write'], createdBy: 'test' })).key
    readKey = (await keys.create({ name: 'dashboard', scopes: ['admin:read'], createdBy: 'test' })).key
    await keys.stop()
  })
  afterAll(() => node?.close())

  const token = (sub: string, claims: Parameters<typeof mintUserToken>[1] extends infer C ? Partial<C> : never = {}) =>
    mintUserToken(env.vars.FANFARE_JWT_SECRET, { sub, ...claims })
  const call = async (method: string, path: string, opts: { token?: string; body?: unknown } = {}) => {
    const res = await fetch(`${base}${path}`, {
      method,
      headers: { ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}), ...(opts.body ? { 'content-type': 'application/json' } : {}) },
      body: opts.body ? JSON.stringify(opts.body) : undefined,
    })
    return { status: res.status, json: (await res.json().catch(() => null)) as any }
  }
  const upgrade = (tokenValue: string) =>
    fetch(`${base}/v1/ws?token=${encodeURIComponent(tokenValue)}`, { headers: UPGRADE_HEADERS })
  const closedWith = (c: WsClient, timeoutMs = 5000) => until('socket closed', () => c.closed, timeoutMs)

  test('a bad or expired token is refused before the upgrade: 401 with its code', async () => {
    const expired = await token('ann', { issuedAt: Math.floor(Date.now() / 1000) - 7200, ttlSeconds: 60 })
    const res = await upgrade(expired)
    expect(res.status).toBe(401)
    expect(((await res.json()) as any).error.code).toBe('token_expired')
    const forged = await mintUserToken('not-the-secret-but-32-bytes-long!!', { sub: 'ann' })
    expect(((await (await upgrade(forged)).json()) as any).error.code).toBe('invalid_token')
  })

  test('a token in a first auth frame: authed with the principal and expiry, then the user may publish chat', async () => {
    const c = await WsClient.open(ws)
    c.send({ op: 'publish', ref: 'early', event: { type: 'chat.message.posted', data: { room: 'lobby', text: 'hi' } } })
    expect((await c.reply('early')).error.code).toBe('unauthorized') // anonymous until it authenticates
    c.send({ op: 'auth', ref: 'a', token: await token('ann', { ttlSeconds: 600 }) })
    const authed = await c.reply('a')
    expect(authed).toMatchObject({ op: 'authed', principal: 'u:ann', dedupWindowMs: env.config.FANFARE_DEDUP_WINDOW_MS })
    expect(Date.parse(authed.expiresAt) - Date.now()).toBeGreaterThan(590_000)
    c.send({ op: 'publish', ref: 'p', event: { type: 'chat.message.posted', data: { room: 'lobby', text: 'hi' } } })
    expect(await c.reply('p')).toMatchObject({ op: 'ack', duplicate: false })
    c.close()
  })

  test('a bad token in a frame: an error frame, then close 4003; an expired one: close 4001', async () => {
    const bad = await WsClient.open(ws)
    bad.send({ op: 'auth', ref: 'a', token: 'not.a.token' })
    expect((await bad.reply('a')).error.code).toBe('invalid_token')
    expect((await closedWith(bad)).code).toBe(CLOSE.FORBIDDEN)
    const late = await WsClient.open(ws)
    late.send({ op: 'auth', ref: 'a', token: await token('ann', { issuedAt: Math.floor(Date.now() / 1000) - 7200, ttlSeconds: 60 }) })
    expect((await late.reply('a')).error.code).toBe('token_expired')
    expect((await closedWith(late)).code).toBe(CLOSE.TOKEN_EXPIRED)
  })

  test('token_expiring before expiry; a fresh token for the same user keeps the socket, without one it closes 4001 at expiry', async () => {
    // Tokens of 5 s warned 3 s before: time enough to answer the warning on a busy machine.
    const keeper = await WsClient.open(`${ws}?token=${await token('kim', { ttlSeconds: 5 })}`)
    const lapser = await WsClient.open(`${ws}?token=${await token('lee', { ttlSeconds: 5 })}`)
    for (const c of [keeper, lapser]) {
      const warning = await until('token_expiring', () => c.frames.find((f) => f.op === 'token_expiring'), 5000)
      expect(Date.parse(warning.expiresAt) - Date.now()).toBeLessThan(3500)
    }
    keeper.send({ op: 'auth', ref: 'r', token: await token('kim', { ttlSeconds: 600 }) })
    expect(await keeper.reply('r')).toMatchObject({ op: 'authed', principal: 'u:kim' })
    const closed = await closedWith(lapser)
    expect(closed).toEqual({ code: CLOSE.TOKEN_EXPIRED, reason: 'token_expired' })
    await Bun.sleep(1500)
    expect(keeper.closed).toBeUndefined()
    keeper.send({ op: 'subscribe', ref: 's', channel: 'leaderboard:still-here' })
    await until('still served', () => keeper.of('leaderboard:still-here').length === 1)
    keeper.close()
  })

  test('a token valid for longer than setTimeout can wait (~24.8 days) is not warned at once', async () => {
    // A delay past 2^31 - 1 ms makes setTimeout fire at once: the warning's wait is re-armed instead.
    const c = await WsClient.open(`${ws}?token=${await token('lon', { ttlSeconds: 60 * 86_400 })}`)
    c.send({ op: 'ping', ref: 'p' })
    await c.reply('p')
    await Bun.sleep(300)
    expect(c.frames.find((f) => f.op === 'token_expiring')).toBeUndefined()
    expect(c.closed).toBeUndefined()
    c.close()
  })

  test("a token for another user on an open connection is refused: forbidden, close 4003", async () => {
    const c = await WsClient.open(`${ws}?token=${await token('ann')}`)
    c.send({ op: 'auth', ref: 'a', token: await token('mallory') })
    expect((await c.reply('a')).error.code).toBe('forbidden')
    expect((await closedWith(c)).code).toBe(CLOSE.FORBIDDEN)
  })

  test('a user posts chat as themselves: naming another user is forbidden; scores are for keys', async () => {
    const t = await token('ann', { name: 'Ann' })
    const asBob = await call('POST', '/v1/events', { token: t, body: { type: 'chat.message.posted', data: { room: 'lobby', user: 'bob', text: 'hi' } } })
    expect(asBob.status).toBe(403)
    expect(asBob.json.error.code).toBe('forbidden')
    expect((await call('POST', '/v1/events', { token: t, body: { type: 'chat.message.posted', data: { room: 'lobby', user: 'ann', text: 'hi' } } })).status).toBe(202)
    // The display name comes from the token too: another one is refused, not silently replaced.
    const renamed = await call('POST', '/v1/events', { token: t, body: { type: 'chat.message.posted', data: { room: 'lobby', name: 'Admin', text: 'hi' } } })
    expect([renamed.status, renamed.json.error.code]).toEqual([403, 'forbidden'])
    expect((await call('POST', '/v1/events', { token: t, body: { type: 'chat.message.posted', data: { room: 'lobby', name: 'Ann', text: 'hi' } } })).status).toBe(202)
    expect((await call('POST', '/v1/events', { token: t, body: { type: 'score.submitted', data: { board: 'b', player: 'ann', score: 1e6 } } })).status).toBe(403)
    expect((await call('POST', '/v1/events', { body: { type: 'chat.message.posted', data: { room: 'lobby', text: 'hi' } } })).status).toBe(401)
  })

  test('deleting a message: moderators and admin keys, over REST and WebSocket; plain users are forbidden', async () => {
    const del = { type: 'chat.message.deleted', data: { room: 'lobby', messageId: 'm1' } }
    const mod = await WsClient.open(`${ws}?token=${await token('mo', { roles: ['moderator'] })}`)
    mod.send({ op: 'publish', ref: 'd', event: del })
    expect((await mod.reply('d')).op).toBe('ack')
    mod.close()
    const plain = await WsClient.open(`${ws}?token=${await token('pat')}`)
    plain.send({ op: 'publish', ref: 'd', event: del })
    expect((await plain.reply('d')).error.code).toBe('forbidden')
    plain.close()
    expect((await call('DELETE', '/admin/rooms/lobby/messages/m2', { token: await token('mo', { roles: ['moderator'] }) })).status).toBe(202)
    expect((await call('DELETE', '/admin/rooms/lobby/messages/m2', { token: await token('pat') })).status).toBe(403)
    expect((await call('DELETE', '/admin/rooms/lobby/messages/m2', { token: adminKey })).status).toBe(202)
  })

  test('admin routes: keys with admin:read read, admin:write writes; users, publish-only and anonymous callers are refused', async () => {
    expect((await call('GET', '/admin/projections', { token: readKey })).status).toBe(200)
    expect((await call('PUT', '/admin/leaderboards/scoped', { token: readKey, body: { operator: 'sum' } })).status).toBe(403)
    expect((await call('PUT', '/admin/leaderboards/scoped', { token: adminKey, body: { operator: 'sum' } })).status).toBe(200)
    expect((await call('GET', '/admin/projections', { token: await token('ann', { roles: ['moderator'] }) })).status).toBe(403)
    expect((await call('GET', '/admin/projections', { token: env.vars.FANFARE_INGEST_TOKEN })).status).toBe(403)
    expect((await call('GET', '/admin/projections')).status).toBe(401)
  })

  test('a private room: subscribing without a matching channels claim is forbidden, naming the channel; REST reads too', async () => {
    expect((await call('PUT', '/admin/rooms/vip-1', { token: adminKey, body: { visibility: 'private' } })).json).toEqual({ room: 'vip-1', visibility: 'private' })
    const anon = await WsClient.open(ws)
    anon.send({ op: 'subscribe', ref: 's', channel: 'chat:vip-1' })
    expect(await anon.reply('s')).toMatchObject({ op: 'error', channel: 'chat:vip-1', error: { code: 'forbidden' } })
    const member = await WsClient.open(`${ws}?token=${await token('vic', { channels: ['chat:vip-*'] })}`)
    member.send({ op: 'subscribe', ref: 's', channel: 'chat:vip-1' })
    await until('member snapshot', () => member.of('chat:vip-1').length === 1)
    expect((await call('GET', '/v1/rooms/vip-1/messages')).status).toBe(403)
    expect((await call('GET', '/v1/rooms/vip-1/messages', { token: await token('vic', { channels: ['chat:vip-*'] }) })).status).toBe(200)
    expect((await call('GET', '/v1/rooms/vip-1/messages', { token: readKey })).status).toBe(200)
    anon.close()
    member.close()
  })

  test('a private room: a user it is closed to may not post there either (REST and WebSocket); members and keys may', async () => {
    expect((await call('PUT', '/admin/rooms/vip-post', { token: adminKey, body: { visibility: 'private' } })).status).toBe(200)
    const post = (text: string) => ({ type: 'chat.message.posted', data: { room: 'vip-post', text } })
    // An outsider's message would reach every member's screen.
    const outsider = await token('eve')
    const refused = await call('POST', '/v1/events', { token: outsider, body: { events: [{ type: 'chat.message.posted', data: { room: 'lobby', text: 'ok' } }, post('sneaking in')] } })
    expect([refused.status, refused.json.error.code]).toEqual([403, 'forbidden'])
    expect(refused.json.error.details).toEqual([{ index: 1, channel: 'chat:vip-post' }])
    const c = await WsClient.open(`${ws}?token=${outsider}`)
    c.send({ op: 'publish', ref: 'p', event: post('over the socket') })
    expect((await c.reply('p')).error.code).toBe('forbidden')
    c.close()
    expect((await call('POST', '/v1/events', { token: await token('vic', { channels: ['chat:vip-*'] }), body: post('a member') })).status).toBe(202)
    expect((await call('POST', '/v1/events', { token: env.vars.FANFARE_INGEST_TOKEN, body: { type: 'chat.message.posted', data: { room: 'vip-post', user: 'bot', text: 'a key' } } })).status).toBe(202)
  })

  test('a private room: a moderator it is closed to may not delete its messages either (REST, the admin route and WebSocket); a member moderator and admin keys may', async () => {
    expect((await call('PUT', '/admin/rooms/vip-mod', { token: adminKey, body: { visibility: 'private' } })).status).toBe(200)
    const del = (messageId: string) => ({ type: 'chat.message.deleted', data: { room: 'vip-mod', messageId } })
    // A moderator of the public rooms cannot read this one: deleting in it would be a write into a
    // room closed to them (and an oracle on ids they cannot see).
    const outsider = await token('mod-eve', { roles: ['moderator'] })
    const refused = await call('POST', '/v1/events', { token: outsider, body: { events: [del('m1')] } })
    expect([refused.status, refused.json.error.code]).toEqual([403, 'forbidden'])
    expect(refused.json.error.details).toEqual([{ index: 0, channel: 'chat:vip-mod' }])
    expect((await call('DELETE', '/admin/rooms/vip-mod/messages/m1', { token: outsider })).status).toBe(403)
    const c = await WsClient.open(`${ws}?token=${outsider}`)
    c.send({ op: 'publish', ref: 'd', event: del('m1') })
    expect((await c.reply('d')).error.code).toBe('forbidden')
    c.close()
    // In a public room the same moderator deletes as before.
    expect((await call('POST', '/v1/events', { token: outsider, body: { type: 'chat.message.deleted', data: { room: 'lobby', messageId: 'm1' } } })).status).toBe(202)
    expect((await call('POST', '/v1/events', { token: await token('mod-vic', { roles: ['moderator'], channels: ['chat:vip-*'] }), body: del('m1') })).status).toBe(202)
    expect((await call('DELETE', '/admin/rooms/vip-mod/messages/m1', { token: adminKey })).status).toBe(202)
  })

  test('a fresh token whose channels claim no longer admits a private room drops that room (and its presence), not the others', async () => {
    expect((await call('PUT', '/admin/rooms/vip-refresh', { token: adminKey, body: { visibility: 'private' } })).status).toBe(200)
    const c = await WsClient.open(`${ws}?token=${await token('ria', { channels: ['chat:vip-refresh'] })}`)
    for (const channel of ['chat:vip-refresh', 'presence:chat:vip-refresh', 'chat:lobby', 'user:ria']) c.send({ op: 'subscribe', ref: channel, channel })
    await until('subscribed', () => ['chat:vip-refresh', 'chat:lobby', 'user:ria'].every((ch) => c.of(ch).length === 1) && c.frames.some((f) => f.channel === 'presence:chat:vip-refresh' && f.op === 'snapshot'))
    // The same user, another claim: what the connection may see is the new token's.
    c.send({ op: 'auth', ref: 'a', token: await token('ria', { channels: [] }) })
    expect(await c.reply('a')).toMatchObject({ op: 'authed', principal: 'u:ria' })
    const dropped = await until('dropped', () => {
      const gone = c.frames.filter((f) => f.op === 'unsubscribed' && f.reason === 'forbidden').map((f) => f.channel)
      return gone.length === 2 ? gone.sort() : undefined
    })
    expect(dropped).toEqual(['chat:vip-refresh', 'presence:chat:vip-refresh'])
    expect(c.frames.find((f) => f.op === 'error' && f.channel === 'chat:vip-refresh')?.error.code).toBe('forbidden')
    expect(c.frames.filter((f) => f.op === 'unsubscribed').map((f) => f.channel).sort()).toEqual(['chat:vip-refresh', 'presence:chat:vip-refresh'])
    c.send({ op: 'subscribe', ref: 'again', channel: 'chat:vip-refresh' })
    expect((await c.reply('again')).error.code).toBe('forbidden')
    expect(c.closed).toBeUndefined()
    c.close()
  })

  test('a room made private drops the subscribers who may no longer see it, with a forbidden error frame', async () => {
    const viewer = await WsClient.open(ws)
    const member = await WsClient.open(`${ws}?token=${await token('vic', { channels: ['chat:club'] })}`)
    for (const c of [viewer, member]) c.send({ op: 'subscribe', channel: 'chat:club' })
    await until('both subscribed', () => viewer.of('chat:club').length === 1 && member.of('chat:club').length === 1)
    await call('PUT', '/admin/rooms/club', { token: adminKey, body: { visibility: 'private' } })
    const dropped = await until('dropped', () => viewer.frames.find((f) => f.op === 'error' && f.channel === 'chat:club'))
    expect(dropped.error.code).toBe('forbidden')
    expect(viewer.frames.find((f) => f.op === 'unsubscribed')).toMatchObject({ channel: 'chat:club', reason: 'forbidden' })
    // Still subscribed: the member gets the next message, the viewer does not.
    const poster = await token('vic', { channels: ['chat:club'] })
    expect((await call('POST', '/v1/events', { token: poster, body: { type: 'chat.message.posted', data: { room: 'club', text: 'members only' } } })).status).toBe(202)
    expect(member.frames.some((f) => f.op === 'error')).toBe(false)
    expect(viewer.closed).toBeUndefined()
    viewer.close()
    member.close()
  })

  test('user:<id> is private to that user (and admin readers)', async () => {
    const ann = await WsClient.open(`${ws}?token=${await token('ann@example.com')}`)
    ann.send({ op: 'subscribe', ref: 'mine', channel: 'user:ann@example.com' })
    await until('own channel', () => ann.of('user:ann@example.com').length === 1)
    expect(ann.of('user:ann@example.com')[0]).toMatchObject({ op: 'snapshot', version: 0, data: { user: 'ann@example.com' } })
    ann.send({ op: 'subscribe', ref: 'theirs', channel: 'user:bob' })
    expect(await ann.reply('theirs')).toMatchObject({ op: 'error', channel: 'user:bob', error: { code: 'forbidden' } })
    const anon = await WsClient.open(ws)
    anon.send({ op: 'subscribe', ref: 's', channel: 'user:ann@example.com' })
    expect((await anon.reply('s')).error.code).toBe('forbidden')
    const admin = await WsClient.open(`${ws}?token=${readKey}`)
    admin.send({ op: 'subscribe', channel: 'user:ann@example.com' })
    await until('admin reads it', () => admin.of('user:ann@example.com').length === 1)
    for (const c of [ann, anon, admin]) c.close()
  })
})

describe('FANFARE_ANONYMOUS=off', () => {
  let node: TestNode
  let env: TestEnv
  let api: RunningApi
  beforeAll(async () => {
    node = await startTestNode({ FANFARE_ANONYMOUS: 'off', FANFARE_AUTH_TIMEOUT_MS: '1000' })
    ;({ env, api } = node)
  })
  afterAll(() => node?.close())

  test('REST reads need a token; a tokenless socket may only authenticate, and is closed 4001 if it does not in time', async () => {
    expect((await fetch(`http://127.0.0.1:${api.port}/v1/leaderboards/x`)).status).toBe(401)
    const t = await mintUserToken(env.vars.FANFARE_JWT_SECRET, { sub: 'ann' })
    expect((await fetch(`http://127.0.0.1:${api.port}/v1/leaderboards/x`, { headers: { authorization: `Bearer ${t}` } })).status).toBe(200)

    const idle = await WsClient.open(`ws://127.0.0.1:${api.port}/v1/ws`)
    idle.send({ op: 'subscribe', ref: 's', channel: 'leaderboard:x' })
    expect((await idle.reply('s')).error.code).toBe('unauthorized')
    expect((await until('closed', () => idle.closed, 5000)).code).toBe(CLOSE.TOKEN_EXPIRED)

    const prompt = await WsClient.open(`ws://127.0.0.1:${api.port}/v1/ws`)
    prompt.send({ op: 'auth', ref: 'a', token: t })
    expect((await prompt.reply('a')).op).toBe('authed')
    prompt.send({ op: 'subscribe', channel: 'leaderboard:x' })
    await until('served after auth', () => prompt.of('leaderboard:x').length === 1)
    await Bun.sleep(1500)
    expect(prompt.closed).toBeUndefined()
    prompt.close()
  })
})
