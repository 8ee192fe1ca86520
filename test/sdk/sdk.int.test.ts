import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { createClient, type Client, type Status } from '../../client/src'
import { until } from '../e2e/harness'
import { startDeployment, type Deployment } from './deployment'

/**
 * The SDK against real Fanfare processes (two API nodes, one worker): state equals the read
 * models, tokens are refreshed on the same connection, a revoked or signed-out client stops for
 * good, and a flood of publishes past the rate limit is stored completely and in order.
 */
describe('client SDK', () => {
  let d: Deployment
  const clients: Client[] = []
  const open = (c: Client) => (clients.push(c), c)
  beforeAll(async () => {
    d = await startDeployment({
      apis: 2,
      workers: 1,
      vars: {
        FANFARE_TOKEN_WARNING_MS: '2000',
        FANFARE_WS_PUBLISHES_PER_SECOND: '40',
        FANFARE_WS_PUBLISH_BURST: '10',
        FANFARE_USER_OPS_PER_SECOND: '60',
        FANFARE_USER_OPS_BURST: '20',
      },
    })
  }, 60_000)
  afterAll(async () => {
    for (const c of clients) c.close()
    await d?.stop()
  })

  const statuses = (c: Client) => {
    const seen: Status[] = []
    c.on('status', (s) => void seen.push(s))
    return seen
  }

  test('a board and a room: the state held equals the read model after scores and chat flow', async () => {
    const board = 'sdk_board'
    const room = 'sdk_room'
    const client = open(createClient({ urls: d.urls, token: await d.token('ann') }))
    const boardSub = client.subscribe(`leaderboard:${board}`)
    const roomSub = client.subscribe(`chat:${room}`)
    let resyncs = 0
    const versions: number[] = []
    client.subscribe(`leaderboard:${board}`, { onResync: () => resyncs++, onUpdate: (_, info) => void versions.push(info.from, info.version) })
    await until('subscribed', () => boardSub.status === 'live' && roomSub.status === 'live')

    // 40 players, scores with ties, from a game server; chat from the user.
    for (let n = 0; n < 8; n++) {
      const events = Array.from({ length: 25 }, (_, k) => ({ type: 'score.submitted', data: { board, player: `p${(n * 25 + k) % 40}`, score: (n * 7 + k) % 13 } }))
      expect((await d.call('POST', '/v1/events', { events }, { node: n % 2 })).status).toBe(202)
    }
    const acks = await Promise.all(Array.from({ length: 12 }, (_, i) => client.publish({ type: 'chat.message.posted', data: { room, user: 'ann', text: `hello ${i}` } })))
    expect(new Set(acks.map((a) => a.id)).size).toBe(12)

    const readBoard = async () => (await d.call('GET', `/v1/leaderboards/${board}?limit=100`)).json
    const readRoom = async () => (await d.call('GET', `/v1/rooms/${room}/messages?limit=50`)).json
    await until(
      'board and room converge',
      async () => {
        const [b, r] = [await readBoard(), await readRoom()]
        const held = boardSub.state?.entries.map(({ reachedSeq: _, ...e }) => e)
        return b.entries.length === 40 && Bun.deepEquals(held, b.entries) && r.messages.length === 12 && Bun.deepEquals(roomSub.state?.messages, r.messages)
      },
      20_000,
      100,
    )
    // Update by update: every frame continued the one before.
    for (let i = 2; i < versions.length; i += 2) expect(versions[i]).toBe(versions[i - 1] + 1)
    expect(resyncs).toBe(0)
    expect(roomSub.state!.messages.map((m) => m.text)).toEqual(Array.from({ length: 12 }, (_, i) => `hello ${11 - i}`))
  }, 60_000)

  test('a busy latest board with more players than shown: the top equals REST, filled from the reserve, not by snapshots', async () => {
    const board = 'sdk_busy'
    expect((await d.call('PUT', `/admin/leaderboards/${board}`, { operator: 'latest' }, { token: d.env.vars.FANFARE_ADMIN_TOKEN })).status).toBe(200)
    // A fixed pseudo-random sequence (scores up and down): the same run every time.
    let x = 7
    const rnd = (n: number) => ((x = (x * 1103515245 + 12345) % 2 ** 31), x % n)
    const post = async (events: { player: string; score: number }[], node: number) =>
      expect((await d.call('POST', '/v1/events', { events: events.map((data) => ({ type: 'score.submitted', data: { board, ...data } })) }, { node })).status).toBe(202)
    await post(Array.from({ length: 250 }, (_, p) => ({ player: `p${p}`, score: rnd(10_000) })), 0)
    const readBoard = async () => (await d.call('GET', `/v1/leaderboards/${board}?limit=100`)).json
    await until('250 players stored', async () => (await d.call('GET', `/v1/leaderboards/${board}?offset=249&limit=1`)).json.entries.length === 1, 20_000, 100)
    const client = open(createClient({ urls: d.urls, token: await d.token('bo') }))
    let resyncs = 0
    let applied = 0
    // Versions applied update by update (one onUpdate may carry several when frames arrive together).
    const sub = client.subscribe(`leaderboard:${board}`, { onResync: () => resyncs++, onUpdate: (_, i) => void (applied += i.version - i.from + 1) })
    await until('subscribed', () => sub.status === 'live')
    for (let n = 0; n < 40; n++) await post(Array.from({ length: 50 }, () => ({ player: `p${rnd(250)}`, score: rnd(10_000) })), n % 2)
    await until(
      'the top 100 held equals REST',
      async () => Bun.deepEquals(sub.state?.entries.map(({ reachedSeq: _, ...e }) => e), (await readBoard()).entries),
      20_000,
      100,
    )
    // About a quarter of these scores take a shown player out of the top. Before the reserve each
    // asked for a snapshot: 10 re-syncs, and only 48 of the 2,000 updates applied (the others came
    // while it waited for snapshots). The reserve of 100 below the top absorbs them (0 re-syncs).
    // CI once saw 316 applied (with fewer than 5 re-syncs, under a browser test's load): say both.
    console.log(`sdk busy board: ${applied} of 2000 updates applied, ${resyncs} re-syncs`)
    expect(applied).toBeGreaterThan(1000)
    expect(resyncs).toBeLessThan(5)
  }, 60_000)

  test('token_expiring: the token function is called once and the same connection goes on', async () => {
    const calls: number[] = []
    const client = open(
      createClient({
        urls: [d.urls[0]],
        token: async () => {
          calls.push(Date.now())
          return d.token('kim', { ttlSeconds: 4 })
        },
      }),
    )
    const seen = statuses(client)
    const room = client.subscribe('chat:sdk_refresh')
    await until('live', () => room.status === 'live')
    // The warning comes 2 s before each expiry (iat is in whole seconds: every 1-2 s here): at
    // least two renewals within 6 s, one call each (no doubled refresh chains), never a reconnect.
    await Bun.sleep(6_500)
    expect(calls.length).toBeGreaterThanOrEqual(3)
    for (let i = 1; i < calls.length; i++) expect(calls[i] - calls[i - 1]).toBeGreaterThan(900)
    expect(seen.filter((s) => s.state !== 'connected')).toEqual([])
    const ack = await client.publish({ type: 'chat.message.posted', data: { room: 'sdk_refresh', user: 'kim', text: 'still here' } })
    expect(ack.duplicate).toBe(false)
    await until('the message arrives on the same connection', () => room.state?.messages.some((m) => m.text === 'still here'))
    expect(seen.filter((s) => s.state !== 'connected')).toEqual([])
  }, 30_000)

  test('a token service that hangs: token_timeout, a new call after the backoff, live; the hung call\'s late token (another user\'s) is never used', async () => {
    let late!: (t: string) => void
    let calls = 0
    const client = open(
      createClient({
        urls: [d.urls[0]],
        token: () => (++calls === 1 ? new Promise<string>((r) => (late = r)) : d.token('tia')),
        tokenTimeoutMs: 500,
        backoff: { minMs: 50, maxMs: 50 },
      }),
    )
    const seen = statuses(client)
    const errors: string[] = []
    client.on('error', (e) => void errors.push(e.code))
    const room = client.subscribe('chat:sdk_token_hang')
    await until('live', () => room.status === 'live', 10_000)
    expect(errors).toEqual(['token_timeout'])
    expect(seen.find((s) => s.state === 'reconnecting')).toMatchObject({ reason: { code: 0, message: 'the token function did not answer within 500 ms' } })
    expect(client.status).toMatchObject({ state: 'connected', principal: 'u:tia' })
    // The hung call answers at last, with a token for someone else: ignored.
    late(await d.token('uma'))
    await Bun.sleep(200)
    expect(client.status).toMatchObject({ state: 'connected', principal: 'u:tia' })
    expect(calls).toBe(2)
    const ack = await client.publish({ type: 'chat.message.posted', data: { room: 'sdk_token_hang', user: 'tia', text: 'here' } })
    expect(ack.duplicate).toBe(false)
  }, 30_000)

  test('a fixed token that expires: closed with 4001, no retry with it', async () => {
    const client = open(createClient({ urls: [d.urls[0]], token: await d.token('lee', { ttlSeconds: 3 }) }))
    const seen = statuses(client)
    await until('closed at expiry', () => client.status.state === 'closed', 10_000)
    expect(client.status).toMatchObject({ state: 'closed', reason: { code: 4001 } })
    expect(seen.filter((s) => s.state === 'connecting')).toHaveLength(0)
    await expect(client.publish({ type: 'chat.message.posted', data: { room: 'r', user: 'lee', text: 'x' } })).rejects.toMatchObject({ code: 'closed' })
  }, 20_000)

  test('revocation closes with 4003 and stops reconnecting; the token function is not asked again', async () => {
    let calls = 0
    const client = open(
      createClient({
        urls: d.urls,
        token: async () => {
          calls++
          return d.token('mo')
        },
      }),
    )
    await until('connected', () => client.status.state === 'connected')
    await Bun.sleep(1100) // revocation covers tokens issued up to now, in whole seconds
    expect((await d.call('POST', '/admin/users/mo/revoke', undefined, { token: d.env.vars.FANFARE_ADMIN_TOKEN })).status).toBe(200)
    await until('closed', () => client.status.state === 'closed', 10_000)
    expect(client.status).toMatchObject({ state: 'closed', reason: { code: 4003 } })
    await Bun.sleep(1500)
    expect(calls).toBe(1)
  }, 20_000)

  test('signing out (the token function gives no token) closes the client instead of retrying', async () => {
    let signedIn = true
    const client = open(createClient({ urls: [d.urls[0]], token: async () => (signedIn ? d.token('sam', { ttlSeconds: 3 }) : null) }))
    await until('connected', () => client.status.state === 'connected')
    signedIn = false
    await until('closed at the renewal', () => client.status.state === 'closed', 10_000)
    expect(client.status).toMatchObject({ state: 'closed', reason: { code: 0, message: expect.stringContaining('signed out') } })
  }, 20_000)

  test('a flood past the rate limits is stored completely, once, in the order published', async () => {
    const room = 'sdk_flood'
    const client = open(createClient({ urls: [d.urls[1]], token: await d.token('flo') }))
    const seen = statuses(client)
    const N = 200
    const acks = await Promise.all(Array.from({ length: N }, (_, i) => client.publish({ type: 'chat.message.posted', data: { room, user: 'flo', text: `m${i}` } })))
    expect(acks.filter((a) => a.duplicate)).toEqual([])
    // The limits were hit (40/s after a burst of 10: 200 take about 5 s), and the socket was never
    // closed for abuse.
    expect(seen.filter((s) => s.state !== 'connected')).toEqual([])
    const readAll = async () => {
      const texts: string[] = []
      let before: string | undefined
      for (;;) {
        const page = (await d.call('GET', `/v1/rooms/${room}/messages?limit=100${before ? `&before=${before}` : ''}`)).json
        if (page.messages.length === 0) return texts.reverse()
        texts.push(...page.messages.map((m: any) => m.text))
        before = page.messages.at(-1).id
      }
    }
    const texts = await until('all projected', async () => {
      const all = await readAll()
      return all.length >= N ? all : undefined
    }, 20_000, 200)
    expect(texts).toEqual(Array.from({ length: N }, (_, i) => `m${i}`))
  }, 60_000)
})
