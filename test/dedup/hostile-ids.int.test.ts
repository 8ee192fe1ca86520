import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { connect } from '@nats-io/transport-node'
import { connectPostgres } from '../../core/db/client'
import { createLogger } from '../../core/logger'
import { TEST_NATS_URL } from '../../core/testing/env'
import { startApi } from '../../api/src/server'
import { startTestNode, type TestNode } from '../../api/src/test-support'
import { startTestWorker, untilCaughtUp } from '../../stream-workers/src/testing/harness'
import type { Workers } from '../../stream-workers/src/workers'
import { mintUserToken } from '../../api/src/auth/mint'
import { WsClient } from '../e2e/harness'

/**
 * Event ids a client picks to make a resend look new, or a new event look like a resend (README
 * "What Fanfare promises" 1, "Events"): an id names one event of its publisher within the
 * de-duplication window, byte for byte, over REST and WebSocket alike, whatever node takes it.
 * A real API node and a real worker, against Postgres and NATS; every board here is a `sum` board,
 * so an event applied twice shows in its total.
 */
describe('hostile event ids', () => {
  let node: TestNode
  let workers: Workers
  let ingest: string

  beforeAll(async () => {
    node = await startTestNode({ FANFARE_PARTITIONS: '2' })
    workers = await startTestWorker(node.env)
    ingest = node.env.vars.FANFARE_INGEST_TOKEN
  })
  afterAll(async () => {
    await workers?.stop()
    await node?.close()
  })

  const postTo = async (base: string, token: string, body: unknown) => {
    const res = await fetch(`${base}/v1/events`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    })
    return { status: res.status, json: (await res.json()) as any }
  }
  const post = (token: string, body: unknown) => postTo(node.base, token, body)
  const admin = (method: string, path: string, body?: unknown) =>
    fetch(`${node.base}${path}`, {
      method,
      headers: { authorization: `Bearer ${node.env.vars.FANFARE_ADMIN_TOKEN}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    })
  const sumBoard = async (board: string) => expect((await admin('PUT', `/admin/leaderboards/${board}`, { operator: 'sum' })).status).toBe(200)
  const entries = async (board: string, base = node.base) => {
    await untilCaughtUp({ config: node.env.config, db: node.database.db, nc: node.nc })
    return ((await (await fetch(`${base}/v1/leaderboards/${board}`)).json()) as any).entries
  }
  const score = (id: string, board: string, player: string, score: number) => ({ id, type: 'score.submitted', data: { board, player, score } })
  const ws = async (token: string) => WsClient.open(`${node.wsUrl}?token=${token}`)

  test('an id of exactly 128 characters is one event over REST and WebSocket; 129 is 422 naming /id and stores nothing', async () => {
    await sumBoard('len')
    const id = `L${'x'.repeat(126)}9`
    expect(id.length).toBe(128)
    const first = await post(ingest, score(id, 'len', 'p', 5))
    expect(first.status).toBe(202)
    expect(first.json.results).toEqual([{ id, seq: expect.any(Number), duplicate: false }])
    const socket = await ws(ingest)
    socket.send({ op: 'publish', ref: 'r1', event: score(id, 'len', 'p', 5) })
    expect(await socket.reply('r1')).toMatchObject({ op: 'ack', id, seq: first.json.results[0].seq, duplicate: true })

    const before = await node.streamCount()
    const long = `${id}z`
    const refused = await post(ingest, score(long, 'len', 'p', 7))
    // Refused by each route's shape check (README "Unknown fields": invalid_request for a body,
    // invalid_frame for a WebSocket frame), both naming the id.
    expect(refused.status).toBe(422)
    expect(refused.json.error.code).toBe('invalid_request')
    expect(refused.json.error.details).toContainEqual(expect.objectContaining({ path: '/id', message: expect.stringContaining('128') }))
    socket.send({ op: 'publish', ref: 'r2', event: score(long, 'len', 'p', 7) })
    expect(await socket.reply('r2')).toMatchObject({ op: 'error', error: { code: 'invalid_frame', details: [expect.objectContaining({ path: '/event/id' })] } })
    socket.close()
    expect(await node.streamCount()).toBe(before)
    expect(await entries('len')).toEqual([{ rank: 1, player: 'p', score: 5 }])
  })

  test('ids differing only in case are two events; a trailing space, another Unicode form or a look-alike is refused, never folded into another id', async () => {
    await sumBoard('case')
    const lower = await post(ingest, score('match-1', 'case', 'p', 1))
    const upper = await post(ingest, score('MATCH-1', 'case', 'p', 10))
    expect([lower.json.results[0].duplicate, upper.json.results[0].duplicate]).toEqual([false, false])
    expect(upper.json.results[0].seq).not.toBe(lower.json.results[0].seq)
    // One batch holding both spellings is two events too (only the same id twice is refused).
    const both = await post(ingest, { events: [score('Round-2', 'case', 'p', 100), score('round-2', 'case', 'p', 1000)] })
    expect(both.json.results.map((r: any) => r.duplicate)).toEqual([false, false])

    const before = await node.streamCount()
    const socket = await ws(ingest)
    const hostile = ['match-1 ', ' match-1', 'match-1\n', 'match-1\t', 'caf\u00e9', 'cafe\u0301', '\uff4datch-1', 'match\u20111', 'match-1\u200b', 'match/1', '']
    for (const [i, id] of hostile.entries()) {
      const res = await post(ingest, { events: [score(id, 'case', 'p', 1_000_000)] })
      expect([JSON.stringify(id), res.status, res.json.error?.code, res.json.error?.details?.[0]?.path]).toEqual([JSON.stringify(id), 422, 'invalid_request', '/events/0/id'])
      socket.send({ op: 'publish', ref: `h${i}`, event: score(id, 'case', 'p', 1_000_000) })
      const frame = await socket.reply(`h${i}`)
      expect([JSON.stringify(id), frame.error?.code, frame.error?.details?.[0]?.path]).toEqual([JSON.stringify(id), 'invalid_frame', '/event/id'])
    }
    socket.close()
    expect(await node.streamCount()).toBe(before)
    expect(await entries('case')).toEqual([{ rank: 1, player: 'p', score: 1111 }])
  })

  test('the same id from two API keys is two events, each key’s resend a duplicate; the same caller’s REST and WebSocket sends are one event', async () => {
    await sumBoard('keys')
    const keyOf = async (name: string) => {
      const res = await admin('POST', '/admin/keys', { name, scopes: ['publish:score.submitted'] })
      expect(res.status).toBe(201)
      return ((await res.json()) as { key: string }).key
    }
    const [a, b] = [await keyOf('server-a'), await keyOf('server-b')]
    const fromA = await post(a, score('final', 'keys', 'p', 1))
    const fromB = await post(b, score('final', 'keys', 'p', 10))
    expect([fromA.json.results[0].duplicate, fromB.json.results[0].duplicate]).toEqual([false, false])
    // Key b resends over WebSocket, key a over REST: each finds its own event.
    const socket = await ws(b)
    socket.send({ op: 'publish', ref: 'b1', event: score('final', 'keys', 'p', 10) })
    expect(await socket.reply('b1')).toMatchObject({ op: 'ack', id: 'final', seq: fromB.json.results[0].seq, duplicate: true })
    // WebSocket first, then REST: the same event.
    socket.send({ op: 'publish', ref: 'b2', event: score('ws@first', 'keys', 'p', 100) })
    const wsFirst = await socket.reply('b2')
    expect(wsFirst).toMatchObject({ op: 'ack', duplicate: false })
    socket.close()
    expect((await post(b, score('ws@first', 'keys', 'p', 100))).json.results).toEqual([{ id: 'ws@first', seq: wsFirst.seq, duplicate: true }])
    expect((await post(a, score('final', 'keys', 'p', 1))).json.results).toEqual([{ id: 'final', seq: fromA.json.results[0].seq, duplicate: true }])
    // The ingest token is another publisher again.
    expect((await post(ingest, score('final', 'keys', 'p', 1000))).json.results[0].duplicate).toBe(false)
    expect(await entries('keys')).toEqual([{ rank: 1, player: 'p', score: 1111 }])
  })

  test('users whose subs differ only by Unicode form are two publishers; a resend by a principal holding non-ASCII characters (in the Nats-Msg-Id) is a duplicate', async () => {
    const player = async (sub: string) => WsClient.open(`${node.wsUrl}?token=${await mintUserToken(node.env.vars.FANFARE_JWT_SECRET, { sub })}`)
    const subs = ['jos\u00e9', 'jose\u0301', '\u{1F3AE}gamer']
    const seqs: number[] = []
    for (const sub of subs) {
      const socket = await player(sub)
      const event = { id: 'hello', type: 'chat.message.posted', data: { room: `uni-${subs.indexOf(sub)}`, text: 'hi' } }
      socket.send({ op: 'publish', ref: 'a', event })
      const first = await socket.reply('a')
      expect([sub, first.op, first.duplicate]).toEqual([sub, 'ack', false])
      socket.send({ op: 'publish', ref: 'b', event })
      expect(await socket.reply('b')).toMatchObject({ op: 'ack', seq: first.seq, duplicate: true })
      socket.close()
      seqs.push(first.seq)
    }
    expect(new Set(seqs).size).toBe(subs.length)
    await untilCaughtUp({ config: node.env.config, db: node.database.db, nc: node.nc })
    for (const [i, sub] of subs.entries()) {
      expect(((await (await fetch(`${node.base}/v1/rooms/uni-${i}/messages`)).json()) as any).messages).toMatchObject([{ id: 'hello', user: sub, text: 'hi' }])
    }
  })

  test('the same id sent at once by several REST requests and a WebSocket frame is stored and applied once; every sender gets its sequence', async () => {
    await sumBoard('race')
    const socket = await ws(ingest)
    for (let round = 0; round < 5; round++) {
      const id = `race-${round}`
      socket.send({ op: 'publish', ref: id, event: score(id, 'race', 'p', 1) })
      const rest = await Promise.all(Array.from({ length: 6 }, () => post(ingest, score(id, 'race', 'p', 1))))
      const frame = await socket.reply(id)
      const results = [...rest.map((r) => r.json.results[0]), { id: frame.id, seq: frame.seq, duplicate: frame.duplicate }]
      expect(results.filter((r) => !r.duplicate)).toHaveLength(1)
      expect(new Set(results.map((r) => r.seq)).size).toBe(1)
    }
    socket.close()
    expect(await entries('race')).toEqual([{ rank: 1, player: 'p', score: 5 }])
  })

  test('a reaction id sent at once by several requests and a frame counts once; the same id from another publisher counts again', async () => {
    const reaction = (id: string) => ({ id, type: 'reaction.sent', data: { stream: 'hostile', emoji: '👏' } })
    const socket = await ws(ingest)
    for (let round = 0; round < 3; round++) {
      const id = `clap-${round}`
      socket.send({ op: 'publish', ref: id, event: reaction(id) })
      const rest = await Promise.all(Array.from({ length: 6 }, () => post(ingest, reaction(id))))
      expect(rest.map((r) => r.status)).toEqual(new Array(6).fill(202))
      expect(await socket.reply(id)).toMatchObject({ op: 'ack', id })
    }
    socket.close()
    const other = await admin('POST', '/admin/keys', { name: 'clapper', scopes: ['publish:reaction.sent'] })
    expect((await post(((await other.json()) as { key: string }).key, reaction('clap-0'))).status).toBe(202)
    await untilCaughtUp({ config: node.env.config, db: node.database.db, nc: node.nc })
    expect(await (await fetch(`${node.base}/v1/streams/hostile/reactions`)).json()).toEqual({ stream: 'hostile', totals: { '👏': 4 } })
  })

  test("a dead letter's id resent is a duplicate that neither applies it nor clears it; replayed, it applies once, and resent again changes nothing", async () => {
    await sumBoard('dl')
    // 9e15 fits (2^53 - 1 is ~9.007e15); one more 1e15 would not: that event is a dead letter.
    expect((await post(ingest, { events: Array.from({ length: 9 }, (_, i) => score(`dl-${i}`, 'dl', 'p', 1e15)) })).status).toBe(202)
    const big = await post(ingest, score('dl-big', 'dl', 'p', 1e15))
    expect(big.status).toBe(202)
    const deadLetters = async () => {
      await untilCaughtUp({ config: node.env.config, db: node.database.db, nc: node.nc })
      return ((await (await admin('GET', '/admin/dead-letters')).json()) as { deadLetters: { id: number; eventId: string | null }[] }).deadLetters.filter((d) => d.eventId === 'dl-big')
    }
    const [letter] = await deadLetters()
    expect(letter).toBeDefined()
    expect(await entries('dl')).toEqual([{ rank: 1, player: 'p', score: 9e15 }])

    expect((await post(ingest, score('dl-big', 'dl', 'p', 1e15))).json.results).toEqual([{ id: 'dl-big', seq: big.json.results[0].seq, duplicate: true }])
    expect((await deadLetters()).map((d) => d.id)).toEqual([letter.id])
    expect(await entries('dl')).toEqual([{ rank: 1, player: 'p', score: 9e15 }])

    expect((await post(ingest, score('dl-down', 'dl', 'p', -1e15))).status).toBe(202)
    expect(await entries('dl')).toEqual([{ rank: 1, player: 'p', score: 8e15 }])
    const replay = await admin('POST', `/admin/dead-letters/${letter.id}/replay`)
    expect(replay.status).toBe(200)
    expect(await entries('dl')).toEqual([{ rank: 1, player: 'p', score: 9e15 }])
    expect(await deadLetters()).toEqual([])

    expect((await post(ingest, score('dl-big', 'dl', 'p', 1e15))).json.results[0]).toMatchObject({ duplicate: true })
    expect((await admin('POST', `/admin/dead-letters/${letter.id}/replay`)).status).toBe(404)
    expect(await entries('dl')).toEqual([{ rank: 1, player: 'p', score: 9e15 }])
  })

  // Last: it stops the file's node.
  test('a resend to another API node, after the first one stopped, is a duplicate and applied once', async () => {
    await sumBoard('restart')
    const first = await post(ingest, { events: [score('r@1', 'restart', 'p', 1), score('r-2', 'restart', 'p', 10)] })
    expect(first.status).toBe(202)
    // A second node of the same deployment (the first one's config, its own connections), then
    // the first one stopped: the resend reaches only the new node.
    const nc = await connect({ servers: TEST_NATS_URL })
    const database = await connectPostgres(node.env.vars.DATABASE_URL, { max: 2 })
    const second = await startApi({ config: node.env.config, db: database.db, nc, logger: createLogger('silent') })
    try {
      await node.api.stop()
      const again = await postTo(`http://127.0.0.1:${second.port}`, ingest, { events: [score('r@1', 'restart', 'p', 1), score('r-2', 'restart', 'p', 10), score('r-3', 'restart', 'p', 100)] })
      expect(again.json.results).toEqual([
        { ...first.json.results[0], duplicate: true },
        { ...first.json.results[1], duplicate: true },
        { id: 'r-3', seq: expect.any(Number), duplicate: false },
      ])
      expect(await entries('restart', `http://127.0.0.1:${second.port}`)).toEqual([{ rank: 1, player: 'p', score: 111 }])
    } finally {
      await second.stop()
      await nc.close()
      await database.close()
    }
  })
})

/**
 * A dead letter's id reused past the de-duplication window (a 1 s window here): README "Events"
 * makes it another event, and "Dead letters" says what replaying the first copy then does.
 */
describe("a dead letter's id resent past the window", () => {
  let node: TestNode
  let workers: Workers
  beforeAll(async () => {
    node = await startTestNode({ FANFARE_PARTITIONS: '1', FANFARE_DEDUP_WINDOW_MS: '1000' })
    workers = await startTestWorker(node.env)
  })
  afterAll(async () => {
    await workers?.stop()
    await node?.close()
  })

  test('is a new event that applies; replaying the dead letter then applies the first copy too', async () => {
    const call = async (method: string, path: string, token: string, body?: unknown) => {
      const res = await fetch(`${node.base}${path}`, { method, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) })
      return { status: res.status, json: (await res.json()) as any }
    }
    const adminToken = node.env.vars.FANFARE_ADMIN_TOKEN
    const ingest = node.env.vars.FANFARE_INGEST_TOKEN
    const score = (id: string, s: number) => ({ id, type: 'score.submitted', data: { board: 'late', player: 'p', score: s } })
    const total = async () => {
      await untilCaughtUp({ config: node.env.config, db: node.database.db, nc: node.nc })
      return (await call('GET', '/v1/leaderboards/late', ingest)).json.entries[0]?.score
    }
    expect((await call('PUT', '/admin/leaderboards/late', adminToken, { operator: 'sum' })).status).toBe(200)
    expect((await call('POST', '/v1/events', ingest, { events: Array.from({ length: 9 }, (_, i) => score(`l-${i}`, 1e15)) })).status).toBe(202)
    const big = await call('POST', '/v1/events', ingest, score('l-big', 1e15))
    expect(big.status).toBe(202)
    expect(await total()).toBe(9e15)
    const letters = (await call('GET', '/admin/dead-letters', adminToken)).json.deadLetters.filter((d: { eventId: string }) => d.eventId === 'l-big')
    expect(letters).toHaveLength(1)
    expect((await call('POST', '/v1/events', ingest, { events: [score('l-down-1', -1e15), score('l-down-2', -1e15)] })).status).toBe(202)
    expect(await total()).toBe(7e15)

    await Bun.sleep(1500)
    const late = await call('POST', '/v1/events', ingest, score('l-big', 1e15))
    expect(late.json.results).toEqual([{ id: 'l-big', seq: expect.any(Number), duplicate: false }])
    expect(late.json.results[0].seq).not.toBe(big.json.results[0].seq)
    expect(await total()).toBe(8e15)
    expect((await call('POST', `/admin/dead-letters/${letters[0].id}/replay`, adminToken)).status).toBe(200)
    expect(await total()).toBe(9e15)
  }, 30_000)
})
