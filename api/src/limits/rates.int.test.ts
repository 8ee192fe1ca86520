import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { channelOf } from '../../../core/channels'
import { WsClient, until } from '../../../test/e2e/harness'
import { createKeyStore } from '../auth/keys'
import { mintUserToken } from '../auth/mint'
import { startTestNode, UPGRADE_HEADERS, type TestNode } from '../test-support'

/** Rate limits on a real API node: WebSocket commands, REST calls, and the close for sustained abuse. */
describe('rate limits', () => {
  let node: TestNode
  beforeAll(async () => {
    node = await startTestNode({
      FANFARE_WS_PUBLISHES_PER_SECOND: '5',
      FANFARE_WS_PUBLISH_BURST: '5',
      // Slow refills, so that the counts below do not depend on how fast the machine is.
      FANFARE_USER_OPS_PER_SECOND: '1',
      FANFARE_USER_OPS_BURST: '8',
      FANFARE_KEY_OPS_PER_SECOND: '4',
      FANFARE_KEY_OPS_BURST: '20',
      FANFARE_WS_ABUSE_WINDOW_MS: '1000',
      FANFARE_WS_ABUSE_FACTOR: '3',
    })
  })
  afterAll(async () => {
    await node?.close()
  })

  const userSocket = async (sub: string) => WsClient.open(`${node.wsUrl}?token=${await mintUserToken(node.env.vars.FANFARE_JWT_SECRET, { sub })}`)
  const chat = (id: string) => ({ id, type: 'chat.message.posted', data: { room: 'rates', text: id } })
  const score = (id: string) => ({ id, type: 'score.submitted', data: { board: 'rates', player: id, score: 1 } })
  const post = (token: string, body: unknown) =>
    fetch(`${node.base}/v1/events`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify(body) })

  test('a publish over the limit is refused and not stored; resent with its id after the wait, it is stored exactly once', async () => {
    const c = await userSocket('r1')
    const before = await node.streamCount()
    for (let i = 1; i <= 6; i++) c.send({ op: 'publish', ref: `p${i}`, event: chat(`r1-${i}`) })
    const replies = await Promise.all([1, 2, 3, 4, 5, 6].map((i) => c.reply(`p${i}`)))
    expect(replies.slice(0, 5).map((r) => r.op)).toEqual(['ack', 'ack', 'ack', 'ack', 'ack'])
    const refused = replies[5]
    // Read before toMatchObject: Bun 1.4.5's toMatchObject writes its asymmetric matchers into the received object.
    const wait = refused.error.retryAfterMs
    expect(refused).toMatchObject({ op: 'error', ref: 'p6', error: { code: 'rate_limited', retryAfterMs: wait, details: { retryAfterMs: wait, perSecond: 5 } } })
    expect(refused.error.message).toContain('per connection')
    expect(wait).toBeGreaterThan(0)
    expect(wait).toBeLessThanOrEqual(200) // one token at 5/s
    expect(await node.streamCount()).toBe(before + 5)

    await Bun.sleep(wait)
    c.send({ op: 'publish', ref: 'again', event: chat('r1-6') })
    expect(await c.reply('again')).toMatchObject({ op: 'ack', id: 'r1-6', duplicate: false })
    await Bun.sleep(250)
    c.send({ op: 'publish', ref: 'third', event: chat('r1-6') })
    expect(await c.reply('third')).toMatchObject({ op: 'ack', id: 'r1-6', duplicate: true })
    expect(await node.streamCount()).toBe(before + 6)
    c.close()
  })

  test('order through a refusal: later events wait for the refused one even when tokens came back, then all are stored in order', async () => {
    const c = await userSocket('r-order')
    for (let i = 1; i <= 6; i++) c.send({ op: 'publish', ref: `p${i}`, event: chat(`ro-${i}`) })
    const first = await Promise.all([1, 2, 3, 4, 5, 6].map((i) => c.reply(`p${i}`)))
    expect(first.map((r) => r.op)).toEqual(['ack', 'ack', 'ack', 'ack', 'ack', 'error'])
    const wait = first[5].error.retryAfterMs
    // A token is back by now, but ro-7 (sent, say, before the client heard of the refusal) must
    // not overtake ro-6: refused, charged nothing, told how long ro-6 still has to wait.
    await Bun.sleep(wait + 50)
    c.send({ op: 'publish', ref: 'p7', event: chat('ro-7') })
    const held = await c.reply('p7')
    expect([held.op, held.error.code]).toEqual(['error', 'rate_limited'])
    expect(held.error.message).toContain('(ro-6) was refused for its rate')
    // The refused event goes first, then the rest.
    c.send({ op: 'publish', ref: 'again6', event: chat('ro-6') })
    expect(await c.reply('again6')).toMatchObject({ op: 'ack', id: 'ro-6', duplicate: false })
    await Bun.sleep(250)
    c.send({ op: 'publish', ref: 'again7', event: chat('ro-7') })
    expect(await c.reply('again7')).toMatchObject({ op: 'ack', id: 'ro-7', duplicate: false })
    const stored = (await node.streamEvents()).filter((e) => e.id.startsWith('ro-')).map((e) => e.id)
    expect(stored).toEqual(['ro-1', 'ro-2', 'ro-3', 'ro-4', 'ro-5', 'ro-6', 'ro-7'])
    c.close()
  })

  test('one budget per user across all their sockets and REST calls', async () => {
    const a = await userSocket('r2')
    const b = await userSocket('r2')
    const before = await node.streamCount()
    for (let i = 0; i < 5; i++) a.send({ op: 'publish', ref: `a${i}`, event: chat(`r2-a${i}`) })
    const fromA = await Promise.all([0, 1, 2, 3, 4].map((i) => a.reply(`a${i}`)))
    expect(fromA.every((r) => r.op === 'ack')).toBe(true)
    // b's own burst (5) is untouched, but the user's (8) has 3 left.
    for (let i = 0; i < 5; i++) b.send({ op: 'publish', ref: `b${i}`, event: chat(`r2-b${i}`) })
    const fromB = await Promise.all([0, 1, 2, 3, 4].map((i) => b.reply(`b${i}`)))
    expect(fromB.map((r) => (r.op === 'ack' ? 'ack' : r.error.code))).toEqual(['ack', 'ack', 'ack', 'rate_limited', 'rate_limited'])
    expect(fromB[3].error.message).toContain('per user')
    // The same user over REST draws on the same budget.
    const res = await post(await mintUserToken(node.env.vars.FANFARE_JWT_SECRET, { sub: 'r2' }), chat('r2-rest'))
    expect(res.status).toBe(429)
    expect(Number(res.headers.get('retry-after'))).toBeGreaterThanOrEqual(1)
    expect(((await res.json()) as any).error).toMatchObject({ code: 'rate_limited', details: { retryAfterMs: expect.any(Number) } })
    expect(await node.streamCount()).toBe(before + 8)
    // Subscribes count too.
    b.send({ op: 'subscribe', ref: 's', channel: channelOf.chat('rates') })
    expect((await b.reply('s')).error.code).toBe('rate_limited')
    a.close()
    b.close()
  })

  test('REST, per key: a batch costs one per event; over the budget 429 with Retry-After, nothing stored; resent later, stored once', async () => {
    const keys = createKeyStore({ db: node.database.db })
    const { key } = await keys.create({ name: 'game-server', scopes: ['publish:*'], createdBy: 'test' })
    await keys.stop()
    const before = await node.streamCount()
    const first = await post(key, { events: Array.from({ length: 15 }, (_, i) => score(`k-${i}`)) })
    expect(first.status).toBe(202)
    const batch = { events: Array.from({ length: 10 }, (_, i) => score(`k-late-${i}`)) }
    const refused = await post(key, batch)
    expect(refused.status).toBe(429)
    const error = ((await refused.json()) as any).error
    const wait = error.details.retryAfterMs
    expect([error.code, error.message]).toEqual(['rate_limited', expect.stringContaining('per API key')])
    // 5 events missing at 4/s: about 1.25 s; Retry-After is whole seconds, rounded up.
    expect(wait).toBeGreaterThan(1000)
    expect(wait).toBeLessThanOrEqual(1250)
    expect(refused.headers.get('retry-after')).toBe('2')
    expect(await node.streamCount()).toBe(before + 15)
    // More events than the budget can ever hold is no reason to wait: 422.
    const huge = await post(key, { events: Array.from({ length: 21 }, (_, i) => score(`k-huge-${i}`)) })
    expect(huge.status).toBe(422)
    expect(((await huge.json()) as any).error.code).toBe('too_many_events')

    // The 422 cost one (any request refused as a whole does): a quarter second more at 4/s.
    await Bun.sleep(wait + 250)
    const resent = await post(key, batch)
    expect(resent.status).toBe(202)
    expect(((await resent.json()) as any).results.map((r: any) => r.duplicate)).toEqual(Array(10).fill(false))
    expect(await node.streamCount()).toBe(before + 25)
    // Other REST calls by the key count too: the budget is about empty again (a slow machine may
    // have refilled a token or two meanwhile).
    const statuses: number[] = []
    for (let i = 0; i < 4 && statuses.at(-1) !== 429; i++) {
      statuses.push((await fetch(`${node.base}/v1/leaderboards/rates`, { headers: { authorization: `Bearer ${key}` } })).status)
    }
    expect(statuses.at(-1)).toBe(429)
  })

  test('the ladder over a socket: a warning frame once the budget is nearly spent, before the first refusal, then rate_limited', async () => {
    // The user's budget: 8, refilled at 1/s; the socket's own: 5 at 5/s. Publishes 250 ms apart keep
    // the socket's bucket full enough, so the user's budget is what runs out: 8, 7.25, ... below a fifth (1.6) after about 9.
    const c = await userSocket('r-ladder')
    const seen: string[] = []
    for (let i = 1; i <= 14 && !seen.includes('error'); i++) {
      c.send({ op: 'publish', ref: `l${i}`, event: chat(`ladder-${i}`) })
      seen.push((await c.reply(`l${i}`)).op)
      if (c.frames.some((f) => f.op === 'warning') && !seen.includes('warning')) seen.push('warning')
      await Bun.sleep(250)
    }
    const warning = c.frames.find((f) => f.op === 'warning')
    expect(warning).toMatchObject({ op: 'warning', warning: { code: 'rate_limit_near', burst: 8, perSecond: 1 } })
    expect(warning.warning.remaining).toBeLessThan(2)
    expect(warning.warning.message).toContain('per user')
    // Acks, then the warning, then more acks, then the refusal: warned before refused.
    expect(seen.indexOf('warning')).toBeGreaterThan(0)
    expect(seen.indexOf('warning')).toBeLessThan(seen.indexOf('error'))
    expect(c.frames.filter((f) => f.op === 'warning')).toHaveLength(1)
    c.close()
  })

  test("REST: every charged answer says where the caller's budget stands (RateLimit-Policy, RateLimit), running down to the 429", async () => {
    const token = await mintUserToken(node.env.vars.FANFARE_JWT_SECRET, { sub: 'r-fields' })
    const read = () => fetch(`${node.base}/v1/leaderboards/rates`, { headers: { authorization: `Bearer ${token}` } })
    const answers: { status: number; policy: string | null; now: string | null }[] = []
    for (let i = 0; i < 12 && answers.at(-1)?.status !== 429; i++) {
      const res = await read()
      answers.push({ status: res.status, policy: res.headers.get('ratelimit-policy'), now: res.headers.get('ratelimit') })
    }
    expect(answers[0]).toEqual({ status: 200, policy: '"user";q=8;w=8', now: expect.stringMatching(/^"user";r=7;t=1$/) })
    const remaining = answers.filter((a) => a.status === 200).map((a) => Number(/r=(\d+)/.exec(a.now!)![1]))
    // Down by one per request (a slow machine may refill one meanwhile), to 0, then the 429.
    expect(remaining.at(-1)).toBe(0)
    for (let i = 1; i < remaining.length; i++) expect(remaining[i]).toBeLessThanOrEqual(remaining[i - 1])
    expect(answers.at(-1)!.status).toBe(429)
  })

  test('a batch refused as a whole (422, 403: nothing stored) costs one, as any refused request, not one per event; refused requests still draw on the budget', async () => {
    // The user's budget: burst 8, 1 a second.
    const token = await mintUserToken(node.env.vars.FANFARE_JWT_SECRET, { sub: 'r-refused' })
    const before = await node.streamCount()
    // One bad event in five: 422, nothing stored. It cost 5 before, leaving 3 of 8.
    const bad = await post(token, { events: [chat('rr-1'), chat('rr-2'), chat('rr-3'), chat('rr-4'), { type: 'chat.message.posted', data: { room: 'rates' } }] })
    expect([bad.status, (await bad.json()).error.code]).toEqual([422, 'invalid_event'])
    // Refused by the route's own body schema (an event without a type): 422 too.
    const shapeless = await post(token, { events: [chat('rr-5'), { data: {} }] })
    expect(shapeless.status).toBe(422)
    // A type users may not publish: 403, nothing stored.
    const denied = await post(token, { events: [chat('rr-6'), score('rr-7')] })
    expect(denied.status).toBe(403)
    expect(await node.streamCount()).toBe(before)
    // Three refusals cost three: five of the eight are left for the good batch.
    const good = await post(token, { events: [chat('rr-a'), chat('rr-b'), chat('rr-c'), chat('rr-d'), chat('rr-e')] })
    expect(good.status).toBe(202)
    expect(await node.streamCount()).toBe(before + 5)
    // The budget is about empty (less than a second has refilled): a bad request is refused too.
    const more = await post(token, { events: [chat('rr-f'), { type: 'chat.message.posted', data: { room: 'rates' } }] })
    expect([more.status, (await more.json()).error.code]).toEqual([429, 'rate_limited'])
  })

  test('a batch larger than the burst (422 too_many_events) costs one too: past the budget such requests are 429, not parsed for free', async () => {
    // The user's budget: burst 8, 1 a second. Nine events can never pass.
    const token = await mintUserToken(node.env.vars.FANFARE_JWT_SECRET, { sub: 'r-oversize' })
    const oversize = { events: Array.from({ length: 9 }, (_, i) => chat(`ro-${i}`)) }
    const codes: string[] = []
    for (let i = 0; i < 12; i++) codes.push(((await (await post(token, oversize)).json()) as any).error.code)
    expect(codes.slice(0, 8)).toEqual(Array(8).fill('too_many_events'))
    // Less than a second has refilled at most one: the budget is spent by what was refused.
    expect(codes.slice(8).filter((c) => c === 'rate_limited').length).toBeGreaterThanOrEqual(3)
  })

  test('a body that cannot be read (bad JSON, a bad escape, not UTF-8, too deep) keeps its 400 but costs one: past the budget it is 429, and the caller\'s good requests wait too', async () => {
    // The user's budget: burst 8, 1 a second.
    const token = await mintUserToken(node.env.vars.FANFARE_JWT_SECRET, { sub: 'r-unreadable' })
    const unreadable: [body: string | Uint8Array<ArrayBuffer>, error: object][] = [
      ['{"type": ', { code: 'bad_json', message: 'request body is not valid JSON' }],
      ['{"type":"chat.message.posted","data":{"room":"rates","text":"\\x"}}', { code: 'bad_json', message: 'request body is not valid JSON' }],
      [new Uint8Array([0x7b, 0x22, 0xff, 0x22, 0x3a, 0x31, 0x7d]), { code: 'bad_json', message: 'request body is not valid UTF-8' }],
      ['['.repeat(100) + ']'.repeat(100), { code: 'too_deep', message: 'request body may nest at most 64 levels', details: { limit: 64 } }],
    ]
    const send = (body: string | Uint8Array<ArrayBuffer>) =>
      fetch(`${node.base}/v1/events`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body })
    const before = await node.streamCount()
    // Eight refusals, the 400 each kept as it was (status, code, message).
    for (let i = 0; i < 8; i++) {
      const [body, error] = unreadable[i % unreadable.length]
      const r = await send(body)
      expect([i, r.status, ((await r.json()) as any).error]).toEqual([i, 400, error])
    }
    // The budget is spent (less than a second has refilled): the next one is 429, and so is a good batch.
    const refused = await send('{"type": ')
    expect([refused.status, ((await refused.json()) as any).error.code]).toEqual([429, 'rate_limited'])
    expect(Number(refused.headers.get('retry-after'))).toBeGreaterThanOrEqual(1)
    expect((await post(token, { events: [chat('ru-1')] })).status).toBe(429)
    expect(await node.streamCount()).toBe(before)
  })

  test('a body without Content-Length that passes FANFARE_MAX_BODY_BYTES while it is read keeps its 413 but costs one: past the budget 429', async () => {
    const token = await mintUserToken(node.env.vars.FANFARE_JWT_SECRET, { sub: 'r-streamed' })
    // Streamed (chunked: no Content-Length), 64 KiB past the 1 MiB default.
    const chunk = new Uint8Array(64 * 1024).fill(0x20)
    const send = () =>
      fetch(`${node.base}/v1/events`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: new ReadableStream({
          start(c) {
            for (let i = 0; i < 17; i++) c.enqueue(chunk)
            c.close()
          },
        }),
        duplex: 'half',
      } as RequestInit)
    const statuses: number[] = []
    for (let i = 0; i < 9; i++) statuses.push((await send()).status)
    expect(statuses).toEqual([413, 413, 413, 413, 413, 413, 413, 413, 429])
  })

  test('a URL with a malformed percent-escape (400 bad_request, refused before the credential is looked at) costs one: past the budget 429', async () => {
    const token = await mintUserToken(node.env.vars.FANFARE_JWT_SECRET, { sub: 'r-escape' })
    // The body is read and parsed before the URL is refused: were the 400 free, so would be a flood of bodies.
    const revoke = () =>
      fetch(`${node.base}/admin/users/a%ZZ/revoke`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify({ note: 'x'.repeat(10_000) }) })
    const answers: [number, string][] = []
    for (let i = 0; i < 9; i++) {
      const r = await revoke()
      answers.push([r.status, ((await r.json()) as any).error.code])
    }
    expect(answers).toEqual([...Array(8).fill([400, 'bad_request']), [429, 'rate_limited']])
    expect((await fetch(`${node.base}/v1/leaderboards/a%ZZ`, { headers: { authorization: `Bearer ${token}` } })).status).toBe(429)
  })

  test('a request refused for what the route needs (a user on an admin route: 403) costs one: past the budget 429, and the caller\'s good requests wait too', async () => {
    // The user's budget: burst 8, 1 a second.
    const token = await mintUserToken(node.env.vars.FANFARE_JWT_SECRET, { sub: 'r-forbidden' })
    const revoke = () =>
      fetch(`${node.base}/admin/users/someone/revoke`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify({ note: 'x'.repeat(10_000) }) })
    const statuses: number[] = []
    for (let i = 0; i < 9; i++) statuses.push((await revoke()).status)
    expect(statuses).toEqual([403, 403, 403, 403, 403, 403, 403, 403, 429])
    expect((await post(token, { events: [chat('rf-1')] })).status).toBe(429)
  })

  test('sustained abuse closes the socket with 4029 and the delay; accepted events are acknowledged and stored first', async () => {
    const c = await userSocket('r3')
    const before = await node.streamCount()
    // 5 pass (the socket's burst); then every refusal weighs 1/5 s, and past 3x the window (3 s of
    // the budget, 15 refusals) within 1 s the socket is closed.
    for (let i = 0; i < 40; i++) c.send({ op: 'publish', ref: `x${i}`, event: chat(`r3-${i}`) })
    await until('the close', () => c.closed, 10_000)
    expect(c.closed!.code).toBe(4029)
    const delay = Number(/reconnect after (\d+) ms/.exec(c.closed!.reason)?.[1])
    expect(delay).toBeGreaterThanOrEqual(1000)
    const acks = c.frames.filter((f) => f.op === 'ack')
    const refused = c.frames.filter((f) => f.op === 'error' && f.error.code === 'rate_limited')
    expect(acks.map((f) => f.id)).toEqual(['r3-0', 'r3-1', 'r3-2', 'r3-3', 'r3-4'])
    expect(refused.length).toBe(16)
    expect(await node.streamCount()).toBe(before + 5)
    // Held off until the delay has passed: the same user is refused before the upgrade.
    const token = await mintUserToken(node.env.vars.FANFARE_JWT_SECRET, { sub: 'r3' })
    const again = await fetch(`${node.wsUrl.replace('ws:', 'http:')}?token=${token}`, { headers: UPGRADE_HEADERS })
    expect(again.status).toBe(429)
    expect(((await again.json()) as any).error).toMatchObject({ code: 'rate_limited', details: { retryAfterMs: expect.any(Number) } })
    // Another user from the same address is not.
    const other = await userSocket('r3-neighbour')
    other.close()
  })

  test('a sign-in makes the user present in the channels the socket holds: it costs the user one subscribe each, and over the budget it is refused (4029) and makes nobody present', async () => {
    // Anonymous subscribes cost the socket only; without this charge, subscribing anonymously and
    // then signing in made a user present in 100 channels a socket (each a join and a leave to
    // every node, and for matches an event appended by the seat watcher) for free, socket after socket.
    const token = await mintUserToken(node.env.vars.FANFARE_JWT_SECRET, { sub: 'r-signin' })
    const anonymousWith = async (tag: string, n: number) => {
      const c = await WsClient.open(node.wsUrl)
      for (let i = 0; i < n; i++) c.send({ op: 'subscribe', ref: `s${i}`, channel: channelOf.match(`${tag}-${i}`) })
      await until('every snapshot', () => c.frames.filter((f) => f.op === 'snapshot').length === n)
      return c
    }
    const present = async (channel: string) => ((await (await fetch(`${node.base}/v1/presence/${channel}`)).json()) as any).users
    // 6 of the user's 8.
    const a = await anonymousWith('signin-a', 6)
    a.send({ op: 'auth', ref: 'auth', token })
    expect(await a.reply('auth')).toMatchObject({ op: 'authed', principal: 'u:r-signin' })
    await until('present', async () => (await present(channelOf.match('signin-a-5'))) === 1)
    // 6 more: 2 left (a token refilled at most), refused. The socket is closed: it is still the
    // viewer it was to the server, and the client reconnects after the delay (as the user).
    const b = await anonymousWith('signin-b', 6)
    b.send({ op: 'auth', ref: 'auth', token })
    const refused = await b.reply('auth')
    expect([refused.op, refused.error.code, refused.error.message]).toEqual(['error', 'rate_limited', expect.stringContaining('per user')])
    expect(refused.error.retryAfterMs).toBeGreaterThan(0)
    await until('the close', () => b.closed, 5000)
    expect(b.closed!.code).toBe(4029)
    expect(b.closed!.reason).toMatch(/^rate_limited: reconnect after \d+ ms$/)
    for (let i = 0; i < 6; i++) expect(await present(channelOf.match(`signin-b-${i}`))).toBe(0)
    // A socket holding no channel where users are present signs in for nothing.
    const c = await WsClient.open(node.wsUrl)
    c.send({ op: 'subscribe', ref: 'board', channel: channelOf.leaderboard('signin') })
    await until('the snapshot', () => c.frames.some((f) => f.op === 'snapshot'))
    c.send({ op: 'auth', ref: 'auth', token })
    expect(await c.reply('auth')).toMatchObject({ op: 'authed' })
    a.close()
    c.close()
  })

  test('limits are per command: malformed frames are answered but charge nothing', async () => {
    const c = await userSocket('r4')
    for (let i = 0; i < 60; i++) c.send({ op: 'publish', ref: `bad${i}`, event: { type: 'chat.message.posted' } })
    await until('every error', () => c.frames.length === 60)
    expect(new Set(c.frames.map((f) => f.error.code))).toEqual(new Set(['invalid_frame']))
    c.send({ op: 'publish', ref: 'good', event: chat('r4-good') })
    expect(await c.reply('good')).toMatchObject({ op: 'ack' })
    expect(c.closed).toBeUndefined()
    c.close()
  })
})

/**
 * Anonymous viewers have no name, so their budget is their address's: every subscribe and REST read
 * costs the node a Postgres or history read, and without it one address could open sockets up to
 * the connection limit and make each read at its own socket's rate.
 */
/** An address's budget of 6, refilled slowly; the tests speak for several clients through one trusted proxy (themselves). */
const ANONYMOUS_BUDGET = { FANFARE_ANONYMOUS_OPS_PER_SECOND: '1', FANFARE_ANONYMOUS_OPS_BURST: '6', FANFARE_TRUSTED_PROXIES: '127.0.0.1' }
/** A readable batch, read and parsed before the credential is checked. */
const READABLE_BODY = JSON.stringify({ events: [{ type: 'chat.message.posted', data: { room: 'rates', text: 'x'.repeat(10_000) } }] })

describe('rate limits of anonymous callers', () => {
  let node: TestNode
  beforeAll(async () => {
    node = await startTestNode(ANONYMOUS_BUDGET)
  })
  afterAll(async () => {
    await node?.close()
  })
  const read = (address: string, token?: string) =>
    fetch(`${node.base}/v1/leaderboards/anon-rates`, { headers: { 'x-forwarded-for': address, ...(token ? { authorization: `Bearer ${token}` } : {}) } })

  test('one budget per address over REST reads and every socket: past it 429 / rate_limited with the wait; other addresses and users are not charged', async () => {
    const statuses: number[] = []
    for (let i = 0; i < 6; i++) statuses.push((await read('203.0.113.7')).status)
    expect(statuses).toEqual([200, 200, 200, 200, 200, 200])
    const refused = await read('203.0.113.7')
    expect(refused.status).toBe(429)
    expect(Number(refused.headers.get('retry-after'))).toBeGreaterThanOrEqual(1)
    const body = (await refused.json()) as any
    expect(body.error).toMatchObject({ code: 'rate_limited', details: { retryAfterMs: expect.any(Number) } })
    expect(body.error.message).toContain('per address of anonymous callers')
    // Another address, and a user behind the same one, have budgets of their own.
    expect((await read('203.0.113.8')).status).toBe(200)
    expect((await read('203.0.113.7', await mintUserToken(node.env.vars.FANFARE_JWT_SECRET, { sub: 'anon-rates' }))).status).toBe(200)

    // Two sockets of one address share its budget: 6 subscribes pass in all, the 7th is refused.
    const sockets = await Promise.all([1, 2].map(() => WsClient.open(node.wsUrl, { 'x-forwarded-for': '203.0.113.9' })))
    /** Subscribes and answers the snapshot, or the error. */
    const subscribe = async (c: WsClient, ref: string, channel: string) => {
      c.send({ op: 'subscribe', ref, channel })
      return until(`an answer to ${ref}`, () => c.frames.find((f) => (f.op === 'snapshot' && f.channel === channel) || (f.op === 'error' && f.ref === ref)))
    }
    const replies = []
    for (let i = 0; i < 7; i++) replies.push(await subscribe(sockets[i % 2], `s${i}`, channelOf.leaderboard(`anon-${i}`)))
    expect(replies.slice(0, 6).map((r) => r.op)).toEqual(['snapshot', 'snapshot', 'snapshot', 'snapshot', 'snapshot', 'snapshot'])
    expect(replies[6]).toMatchObject({ op: 'error', ref: 's6', error: { code: 'rate_limited' } })
    expect(replies[6].error.message).toContain('per address of anonymous callers')
    // A socket of another address subscribes as before.
    const other = await WsClient.open(node.wsUrl, { 'x-forwarded-for': '203.0.113.10' })
    expect((await subscribe(other, 'o', channelOf.leaderboard('anon-0'))).op).toBe('snapshot')
    for (const c of [...sockets, other]) c.close()
    // The operator sees whose budget refused: anonymous callers' (an address), not a user's.
    const metrics = await (await fetch(`${node.base}/metrics`, { headers: { authorization: `Bearer ${node.env.vars.FANFARE_ADMIN_TOKEN}` } })).text()
    expect(metrics).toContain('fanfare_rate_limited_total{what="rest",caller="anonymous"} 1')
    expect(metrics).toContain('fanfare_rate_limited_total{what="ws_subscribe",caller="anonymous"} 1')
  })

  test('a body that cannot be read costs its address one, though the route needs a token: past the budget 429; other addresses are not charged', async () => {
    const send = (address: string) =>
      fetch(`${node.base}/v1/events`, { method: 'POST', headers: { 'x-forwarded-for': address, 'content-type': 'application/json' }, body: '{"type": ' })
    const statuses: number[] = []
    for (let i = 0; i < 7; i++) statuses.push((await send('203.0.113.20')).status)
    expect(statuses).toEqual([400, 400, 400, 400, 400, 400, 429])
    // The address's reads wait as well; another address's do not.
    expect((await read('203.0.113.20')).status).toBe(429)
    expect((await send('203.0.113.21')).status).toBe(400)
    expect((await read('203.0.113.21')).status).toBe(200)
  })

  test('a readable body sent without the token the route needs costs its address one too: 401 until the budget is spent, then 429', async () => {
    // Were a 401 free, a flood of valid bodies would be.
    const send = (address: string) =>
      fetch(`${node.base}/v1/events`, { method: 'POST', headers: { 'x-forwarded-for': address, 'content-type': 'application/json' }, body: READABLE_BODY })
    const statuses: number[] = []
    for (let i = 0; i < 7; i++) statuses.push((await send('203.0.113.30')).status)
    expect(statuses).toEqual([401, 401, 401, 401, 401, 401, 429])
    expect((await read('203.0.113.30')).status).toBe(429)
    expect((await send('203.0.113.31')).status).toBe(401)
    expect((await read('203.0.113.31')).status).toBe(200)
  })
})

describe('rate limits where anonymous callers are off', () => {
  let node: TestNode
  beforeAll(async () => {
    node = await startTestNode({ ...ANONYMOUS_BUDGET, FANFARE_ANONYMOUS: 'off' })
  })
  afterAll(async () => {
    await node?.close()
  })

  test('a request without a token is 401 and costs its address one: past the budget 429; other addresses and users are not charged', async () => {
    // Were these 401s free, so would a flood of bodies be, on a server that admits no anonymous caller at all.
    const send = (address: string, token?: string) =>
      fetch(`${node.base}/v1/events`, {
        method: 'POST',
        headers: { 'x-forwarded-for': address, 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
        body: READABLE_BODY,
      })
    const read = (address: string, token?: string) =>
      fetch(`${node.base}/v1/leaderboards/anon-off`, { headers: { 'x-forwarded-for': address, ...(token ? { authorization: `Bearer ${token}` } : {}) } })
    const statuses: number[] = []
    for (let i = 0; i < 4; i++) statuses.push((await send('203.0.113.40')).status)
    for (let i = 0; i < 3; i++) statuses.push((await read('203.0.113.40')).status)
    expect(statuses).toEqual([401, 401, 401, 401, 401, 401, 429])
    const first = (await (await send('203.0.113.41')).json()) as any
    expect(first.error).toMatchObject({ code: 'unauthorized', message: 'this server needs a token (Authorization: Bearer <token>)' })
    expect((await read('203.0.113.41')).status).toBe(401)
    // A user behind the spent address has a budget of their own.
    const user = await mintUserToken(node.env.vars.FANFARE_JWT_SECRET, { sub: 'anon-off' })
    expect((await read('203.0.113.40', user)).status).toBe(200)
  })
})
