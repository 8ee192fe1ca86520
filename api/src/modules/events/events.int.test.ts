import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { DiscardPolicy } from '@nats-io/jetstream'
import { connect } from '@nats-io/transport-node'
import { partitionOf } from '../../../../core/events'
import { rootKey } from '../../auth/principal'
import { createLogger } from '../../../../core/logger'
import { topology } from '../../../../core/nats'
import { TEST_NATS_URL } from '../../../../core/testing/env'
import { countErrorPulls, unknownKeys } from '../../../../core/testing/error-pulls'
import { until } from '../../../../core/testing/wait'
import { createApp } from '../../app'
import { createHarness, type ApiHarness } from '../../test-support'
import { Unavailable } from '../../errors'
import { createIngest } from './service'
import { connectPostgres } from '../../../../core/db/client'
import { createMetrics } from '../../../../core/metrics'
import { freePort } from '../../../../core/process'
import { createRoomAccess } from '../../auth/rooms'
import type { Principal } from '../../auth/principal'

const score = (player: string, value = 1, id?: string) => ({
  ...(id ? { id } : {}),
  type: 'score.submitted',
  data: { board: 'main', player, score: value },
})
const expectErrorShape = (json: any, code: string) => {
  expect(typeof json.error.message).toBe('string')
  expect(json.error.code).toBe(code)
}

describe('POST /v1/events', () => {
  let h: ApiHarness
  beforeAll(async () => {
    h = await createHarness({ FANFARE_MAX_BODY_BYTES: '65536' })
  })
  afterAll(async () => {
    await h.close()
  })

  test('stores one event and answers 202 with its sequence', async () => {
    const before = await h.streamCount()
    const r = await h.call('POST', '/v1/events', { token: h.ingestToken, body: score('alice', 10, 'evt-1') })
    expect(r.status).toBe(202)
    expect(r.json.results).toHaveLength(1)
    expect(r.json.results[0]).toMatchObject({ id: 'evt-1', duplicate: false })
    expect(r.json.results[0].seq).toBeGreaterThan(0)
    expect(await h.streamCount()).toBe(before + 1)
    const stored = await h.jsm.streams.getMessage(topology(h.env.config).eventStream, { seq: r.json.results[0].seq })
    const body = stored!.json<any>()
    expect(body).toMatchObject({ id: 'evt-1', type: 'score.submitted', v: 1, data: { board: 'main', player: 'alice', score: 10 } })
    expect(Number.isNaN(Date.parse(body.at))).toBe(false)
  })

  test('a resent id is reported duplicate with the same sequence and stored once', async () => {
    const first = await h.call('POST', '/v1/events', { token: h.ingestToken, body: score('bob', 5, 'evt-dup') })
    const count = await h.streamCount()
    const again = await h.call('POST', '/v1/events', { token: h.ingestToken, body: score('bob', 5, 'evt-dup') })
    expect(again.status).toBe(202)
    expect(again.json.results[0]).toEqual({ id: 'evt-dup', seq: first.json.results[0].seq, duplicate: true })
    expect(await h.streamCount()).toBe(count)
  })

  test('requests published in one turn are stored in call order, each event under its own Nats-Msg-Id', async () => {
    const ingest = createIngest({ config: h.env.config, nc: h.nc, logger: createLogger('silent'), rooms: h.deps.security.rooms })
    // Three requests of one key (one partition), all in flight together.
    const requests = [0, 1, 2].map((r) => [score('order', r * 10 + 1, `ord-${r}-a`), score('order', r * 10 + 2, `ord-${r}-b`)])
    const results = await Promise.all(requests.map((events) => ingest.publish(events, rootKey('ingest'))))
    const seqs = results.flat().map((x) => x.seq)
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b))
    expect(results.flat().map((x) => x.duplicate)).toEqual(new Array(6).fill(false))
    for (const x of results.flat()) {
      const m = await h.jsm.streams.getMessage(topology(h.env.config).eventStream, { seq: x.seq })
      expect(m!.json<any>().id).toBe(x.id)
      expect(m!.header.get('Nats-Msg-Id')).toBe(`ingest/${x.id}`)
    }
  })

  test('stop: the events in flight are acknowledged, then new publishes are 503 and nothing more is stored', async () => {
    const ingest = createIngest({ config: h.env.config, nc: h.nc, logger: createLogger('silent'), rooms: h.deps.security.rooms })
    const inFlight = ingest.publish([score('stopping', 1, 'stop-1'), score('stopping', 2, 'stop-2')], rootKey('ingest'))
    const stopped = ingest.stop()
    expect((await inFlight).map((r) => [r.id, r.duplicate])).toEqual([['stop-1', false], ['stop-2', false]])
    await stopped
    const count = await h.streamCount()
    const refused = await ingest.publish([score('stopping', 3, 'stop-3')], rootKey('ingest')).catch((err) => err)
    expect(refused).toBeInstanceOf(Unavailable)
    expect(refused.status).toBe(503)
    expect(await h.streamCount()).toBe(count)
  })

  test('a batch of 3 answers results in input order; missing ids become UUIDv7', async () => {
    const r = await h.call('POST', '/v1/events', {
      token: h.ingestToken,
      body: { events: [score('a', 1, 'b-1'), score('b', 2), { type: 'chat.message.posted', data: { room: 'lobby', user: 'u', text: 'hi' } }] },
    })
    expect(r.status).toBe(202)
    const results = r.json.results
    expect(results).toHaveLength(3)
    expect(results[0].id).toBe('b-1')
    expect(results[1].id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/)
    expect(results[2].id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7/)
    // Published from one connection in input order, so stored in input order.
    expect(results[0].seq).toBeLessThan(results[1].seq)
    expect(results[1].seq).toBeLessThan(results[2].seq)
  })

  test('401 without a token or with an unknown one, 403 for admin-only events with the ingest token', async () => {
    const before = await h.streamCount()
    const none = await h.call('POST', '/v1/events', { body: score('x') })
    expect(none.status).toBe(401)
    expectErrorShape(none.json, 'unauthorized')
    const wrong = await h.call('POST', '/v1/events', { token: 'not-a-real-token-at-all', body: score('x') })
    expect(wrong.status).toBe(401)
    expectErrorShape(wrong.json, 'invalid_token')
    const del = { type: 'chat.message.deleted', data: { room: 'lobby', messageId: 'm1' } }
    const forbidden = await h.call('POST', '/v1/events', { token: h.ingestToken, body: { events: [score('ok'), del] } })
    expect(forbidden.status).toBe(403)
    expectErrorShape(forbidden.json, 'forbidden')
    expect(await h.streamCount()).toBe(before)
    // The admin token is accepted wherever the ingest token is, and may publish admin events.
    const admin = await h.call('POST', '/v1/events', { token: h.adminToken, body: del })
    expect(admin.status).toBe(202)
  })

  test('an unknown type rejects the whole batch and publishes nothing', async () => {
    const before = await h.streamCount()
    const r = await h.call('POST', '/v1/events', { token: h.ingestToken, body: { events: [score('fine'), { type: 'nope.happened', data: {} }] } })
    expect(r.status).toBe(422)
    expectErrorShape(r.json, 'unknown_event_type')
    expect(r.json.error.details).toEqual([{ index: 1, type: 'nope.happened' }])
    expect(await h.streamCount()).toBe(before)
  })

  test('invalid data is 422 invalid_event with index/path details and publishes nothing', async () => {
    const before = await h.streamCount()
    const r = await h.call('POST', '/v1/events', {
      token: h.ingestToken,
      body: { events: [score('fine'), { type: 'score.submitted', data: { board: 'bad board!', player: 'p', score: 'high' } }] },
    })
    expect(r.status).toBe(422)
    expectErrorShape(r.json, 'invalid_event')
    const paths = r.json.error.details.map((d: any) => `${d.index}${d.path}`)
    expect(paths).toContain('1/data/board')
    expect(paths).toContain('1/data/score')
    for (const d of r.json.error.details) expect(typeof d.message).toBe('string')
    expect(await h.streamCount()).toBe(before)
  })

  test('a poll whose options repeat (the same text once trimmed, in any case and compatibility form) is 422 invalid_event naming both; distinct options are fine', async () => {
    const before = await h.streamCount()
    const poll = (options: string[]) => ({ type: 'poll.opened', data: { stream: 'tv', poll: 'dup', question: 'Which?', options } })
    const form = ': options are compared in any case and character form (full-width, ligatures, superscripts)'
    for (const [options, index, message] of [
      // Full-width Ａ is A to a voter (NFKC), as are a ligature and its letters.
      [['A', 'B', '\uff21'], 2, `repeats option 0 ("A")${form}`],
      [['\uff41', 'b', 'A'], 2, `repeats option 0 ("\uff41")${form}`],
      [['file', '\ufb01le'], 1, `repeats option 0 ("file")${form}`],
      [['yes', 'no', 'yes'], 2, 'repeats option 0 ("yes")'],
      [['yes', 'no', ' yes '], 2, 'repeats option 0 ("yes")'],
      [['Yes', 'yes '], 1, `repeats option 0 ("Yes")${form}`],
      [['a', 'b', 'c', 'B'], 3, `repeats option 1 ("b")${form}`],
    ] as const) {
      const r = await h.call('POST', '/v1/events', { token: h.ingestToken, body: { events: [poll([...options])] } })
      expect({ options, status: r.status, details: r.json.error?.details }).toEqual({ options, status: 422, details: [{ index: 0, path: `/data/options/${index}`, message }] })
      expectErrorShape(r.json, 'invalid_event')
      expect(r.json.error.message).toContain(message)
    }
    expect(await h.streamCount()).toBe(before)
    const fine = await h.call('POST', '/v1/events', { token: h.ingestToken, body: { events: [poll(['yes', 'no', 'yes!'])] } })
    expect(fine.status).toBe(202)
    expect(await h.streamCount()).toBe(before + 1)
  })

  test('a poll whose question or an option is only spaces is 422 invalid_event naming it', async () => {
    const before = await h.streamCount()
    const poll = (question: string, options: string[]) => ({ type: 'poll.opened', data: { stream: 'tv', poll: 'blank', question, options } })
    for (const [data, path] of [[poll('Which?', ['yes', '  ']), '/data/options/1'], [poll(' \u3000 ', ['yes', 'no']), '/data/question']] as const) {
      const r = await h.call('POST', '/v1/events', { token: h.ingestToken, body: { events: [data] } })
      expect(r.status).toBe(422)
      expectErrorShape(r.json, 'invalid_event')
      expect(r.json.error.details).toEqual([{ index: 0, path, message: 'is blank' }])
    }
    expect(await h.streamCount()).toBe(before)
  })

  test('NUL characters and lone surrogates in a player or chat text are 422 invalid_event; emoji are fine', async () => {
    const before = await h.streamCount()
    const r = await h.call('POST', '/v1/events', {
      token: h.ingestToken,
      body: {
        events: [
          { type: 'score.submitted', data: { board: 'main', player: 'a\u0000b', score: 1 } },
          { type: 'chat.message.posted', data: { room: 'lobby', user: 'ann', text: 'hi\u0000' } },
          { type: 'score.submitted', data: { board: 'main', player: 'x\ud800', score: 1 } },
          { type: 'chat.message.posted', data: { room: 'lobby', user: 'ann', text: '\udc00 lone low' } },
          { type: 'chat.message.posted', data: { room: 'lobby', user: 'ann🎮', text: 'gg 🎉' } },
        ],
      },
    })
    expect(r.status).toBe(422)
    expectErrorShape(r.json, 'invalid_event')
    expect(r.json.error.details.map((d: any) => `${d.index}${d.path}`)).toEqual(['0/data/player', '1/data/text', '2/data/player', '3/data/text'])
    expect(await h.streamCount()).toBe(before)
    const ok = await h.call('POST', '/v1/events', {
      token: h.ingestToken,
      body: { type: 'chat.message.posted', data: { room: 'lobby', user: 'ann🎮', text: 'gg 🎉' } },
    })
    expect(ok.status).toBe(202)
  })

  test('duplicate ids in one batch are rejected', async () => {
    const before = await h.streamCount()
    const r = await h.call('POST', '/v1/events', { token: h.ingestToken, body: { events: [score('a', 1, 'same'), score('b', 1, 'same')] } })
    expect(r.status).toBe(422)
    expectErrorShape(r.json, 'duplicate_id_in_batch')
    expect(await h.streamCount()).toBe(before)
  })

  test('malformed bodies: bad JSON 400, wrong shape 422, empty batch 422', async () => {
    const bad = await h.call('POST', '/v1/events', { token: h.ingestToken, body: '{"type": ' })
    expect(bad.status).toBe(400)
    expectErrorShape(bad.json, 'bad_json')
    const shape = await h.call('POST', '/v1/events', { token: h.ingestToken, body: { type: 'score.submitted' } })
    expect(shape.status).toBe(422)
    expectErrorShape(shape.json, 'invalid_request')
    expect(Array.isArray(shape.json.error.details)).toBe(true)
    const empty = await h.call('POST', '/v1/events', { token: h.ingestToken, body: { events: [] } })
    expect(empty.status).toBe(422)
    expect(empty.json.error.code).toBeString()
  })

  test('a body that is not UTF-8 is 400 bad_json and stores nothing (never stored with U+FFFD in place of its bytes)', async () => {
    const before = await h.streamCount()
    const text = new TextEncoder().encode(JSON.stringify({ type: 'chat.message.posted', data: { room: 'utf8', user: 'ann', text: 'ok BAD' } }))
    const at = Buffer.from(text).indexOf('BAD')
    for (const bytes of [[0xff, 0xfe], [0xc0, 0x80], [0xed, 0xa0, 0x80], [0xe2, 0x82]]) {
      const body = new Uint8Array([...text.subarray(0, at), ...bytes, ...text.subarray(at)])
      // Read chunk by chunk (no Content-Length) and at once (a Content-Length within the limit).
      for (const length of [{}, { 'content-length': String(body.byteLength) }] as Record<string, string>[]) {
        const res = await h.app.handle(
          new Request('http://localhost/v1/events', { method: 'POST', headers: { authorization: `Bearer ${h.ingestToken}`, 'content-type': 'application/json', ...length }, body }),
        )
        expect(res.status).toBe(400)
        expectErrorShape(await res.json(), 'bad_json')
      }
    }
    expect(await h.streamCount()).toBe(before)
    // A byte order mark is not an error (RFC 8259 lets a parser ignore it).
    const bom = new Uint8Array([0xef, 0xbb, 0xbf, ...text])
    const ok = await h.app.handle(new Request('http://localhost/v1/events', { method: 'POST', headers: { authorization: `Bearer ${h.ingestToken}` }, body: bom }))
    expect(ok.status).toBe(202)
  })

  test('more than 500 events is 422 too_many_events and publishes nothing', async () => {
    const before = await h.streamCount()
    const events = Array.from({ length: 501 }, (_, i) => score(`p${i}`))
    const r = await h.call('POST', '/v1/events', { token: h.ingestToken, body: { events } })
    expect(r.status).toBe(422)
    expectErrorShape(r.json, 'too_many_events')
    expect(await h.streamCount()).toBe(before)
  })

  test('a body over FANFARE_MAX_BODY_BYTES is 413, declared or streamed', async () => {
    const before = await h.streamCount()
    const text = 'x'.repeat(1500)
    const big = JSON.stringify({ events: Array.from({ length: 60 }, () => ({ type: 'chat.message.posted', data: { room: 'r', user: 'u', text } })) })
    expect(big.length).toBeGreaterThan(h.env.config.FANFARE_MAX_BODY_BYTES)
    // No Content-Length (streamed): the limit applies while reading.
    const streamed = await h.call('POST', '/v1/events', { token: h.ingestToken, body: big })
    expect(streamed.status).toBe(413)
    expectErrorShape(streamed.json, 'payload_too_large')
    // Declared Content-Length: refused before reading.
    const declared = await h.app.handle(
      new Request('http://localhost/v1/events', {
        method: 'POST',
        headers: { authorization: `Bearer ${h.ingestToken}`, 'content-type': 'application/json', 'content-length': String(big.length) },
        body: big,
      }),
    )
    expect(declared.status).toBe(413)
    expect(((await declared.json()) as any).error.code).toBe('payload_too_large')
    expect(await h.streamCount()).toBe(before)
  })
})

describe('JetStream unavailable', () => {
  let h: ApiHarness
  beforeAll(async () => {
    h = await createHarness()
  })
  afterAll(async () => {
    await h.close()
  })

  /** POSTs one event through an app whose ingest uses `overrides` on top of this test's config. */
  async function postWith(overrides: Partial<typeof h.env.config>) {
    const config = { ...h.env.config, ...overrides }
    const app = createApp({ ...h.deps, config, ingest: createIngest({ config, nc: h.nc, rooms: h.deps.security.rooms, logger: createLogger('silent'), publishTimeoutMs: 2000 }) })
    const res = await app.handle(
      new Request('http://localhost/v1/events', {
        method: 'POST',
        headers: { authorization: `Bearer ${h.ingestToken}`, 'content-type': 'application/json' },
        body: JSON.stringify(score('z')),
      }),
    )
    return { status: res.status, json: (await res.json()) as any }
  }

  test('publishing to a stream that does not exist is 503, never 202', async () => {
    const r = await postWith({ FANFARE_STREAM: `${h.env.config.FANFARE_STREAM}_MISSING`, FANFARE_SUBJECT_PREFIX: `${h.env.config.FANFARE_SUBJECT_PREFIX}_missing` })
    expect(r.status).toBe(503)
    expect(r.json.error.code).toBe('unavailable')
  })

  test('events stored by another stream than the configured one are 503, never 202', async () => {
    // Same subjects, another stream name: the deployment's real stream captures them.
    const r = await postWith({ FANFARE_STREAM: `${h.env.config.FANFARE_STREAM}_OTHER` })
    expect(r.status).toBe(503)
    expect(r.json.error.code).toBe('unavailable')
  })

  test('a closed NATS connection is 503 unavailable', async () => {
    const nc = await connect({ servers: TEST_NATS_URL })
    await nc.close()
    const app = createApp({ ...h.deps, nc })
    const res = await app.handle(
      new Request('http://localhost/v1/events', {
        method: 'POST',
        headers: { authorization: `Bearer ${h.ingestToken}`, 'content-type': 'application/json' },
        body: JSON.stringify(score('z')),
      }),
    )
    expect(res.status).toBe(503)
    expect(res.headers.get('retry-after')).toBe('1')
    expect(((await res.json()) as any).error.code).toBe('unavailable')
  })

  test('a NATS connection closing as events go out is 503 unavailable at once, not after the publish timeout', async () => {
    const nc = await connect({ servers: TEST_NATS_URL })
    const ingest = createIngest({ config: h.env.config, nc, logger: createLogger('silent'), rooms: h.deps.security.rooms, publishTimeoutMs: 5000 })
    // A first publish makes the acknowledgement subscription, as on a running node.
    await ingest.publish([score('closing', 1)], rootKey('ingest'))
    const t0 = Date.now()
    // Validated while the connection is open; sent at the end of the turn, after close() began
    // (nats.js has ended the subscriptions and not yet marked the connection closed).
    const publishing = ingest.publish([score('closing', 2)], rootKey('ingest')).catch((err) => err)
    const closing = nc.close()
    const err = await publishing
    expect(err).toBeInstanceOf(Unavailable)
    expect(err.code).toBe('unavailable')
    expect(Date.now() - t0).toBeLessThan(1000)
    await closing
  })

  test('past FANFARE_INGEST_MAX_IN_FLIGHT a request is 503 overloaded at once and publishes nothing', async () => {
    const config = { ...h.env.config, FANFARE_INGEST_MAX_IN_FLIGHT: 500 }
    const ingest = createIngest({ config, nc: h.nc, rooms: h.deps.security.rooms, logger: createLogger('silent') })
    const batch = (tag: string) => Array.from({ length: 300 }, (_, i) => ({ id: `${tag}-${i}`, ...score(`p${i}`) }))
    const before = await h.streamCount()
    // The first request's 300 events are in flight when the second arrives: 600 > 500.
    const first = ingest.publish(batch('first'), rootKey('ingest'))
    const second = ingest.publish(batch('second'), rootKey('ingest')).catch((err) => err)
    expect((await first).length).toBe(300)
    expect(await second).toMatchObject({ status: 503, code: 'overloaded' })
    expect(await h.streamCount()).toBe(before + 300)
    // Once the first is acknowledged there is room again.
    expect((await ingest.publish(batch('third'), rootKey('ingest'))).length).toBe(300)
  })
})

describe('Postgres unavailable for a room check', () => {
  test("a user's chat event is 503 database_unavailable, counted and logged, and stores nothing", async () => {
    const h = await createHarness()
    // A database nobody listens on: the room lookup fails as with Postgres down (ECONNREFUSED).
    const gone = await connectPostgres(`postgres://postgres@127.0.0.1:${freePort()}/none`, { max: 1 })
    const lines: string[] = []
    const logger = createLogger('info', {}, { output: { write: (l: string) => lines.push(l) }, format: 'json' })
    const rooms = createRoomAccess({ db: gone.db, nc: h.nc, prefix: h.env.config.FANFARE_SUBJECT_PREFIX, logger })
    const metrics = createMetrics()
    const ingest = createIngest({ config: h.env.config, nc: h.nc, logger, rooms, metrics })
    const user: Principal = { kind: 'user', id: 'ann', name: 'Ann', roles: [], channels: [], expiresAt: Date.now() + 3600_000 }
    try {
      const err = await ingest.publish([{ type: 'chat.message.posted', data: { room: 'lobby', user: 'ann', text: 'hi' } }, { type: 'chat.message.posted', data: { room: 'lobby', user: 'ann', text: 'again' } }], user).catch((e) => e)
      expect(err).toBeInstanceOf(Unavailable)
      expect(err.code).toBe('database_unavailable')
      expect(err.message).toContain('cannot check the room')
      expect(await metrics.text()).toContain('fanfare_events_refused_total{code="database_unavailable"} 2')
      expect(lines.some((l) => l.includes('cannot check the room'))).toBe(true)
      expect(await h.streamCount()).toBe(0)
    } finally {
      rooms.stop()
      await gone.close()
      await h.close()
    }
  })
})

describe('a JetStream failure part-way through a request', () => {
  let h: ApiHarness
  beforeAll(async () => {
    h = await createHarness()
  })
  afterAll(async () => {
    await h.close()
  })

  test('the 503 lists every event id (generated ones too) with whether it was stored; resending exactly those stores each event once', async () => {
    const stream = topology(h.env.config).eventStream
    const before = await h.streamCount()
    // The stream takes 3 more events and refuses the rest of the batch (discard new).
    const info = await h.jsm.streams.info(stream)
    await h.jsm.streams.update(stream, { ...info.config, max_msgs: before + 3, discard: DiscardPolicy.New })
    const events = [score('p1', 1), score('p2', 2, 'given-2'), score('p3', 3), score('p4', 4), score('p5', 5, 'given-5')]
    const r = await h.call('POST', '/v1/events', { token: h.ingestToken, body: { events } })
    expect(r.status).toBe(503)
    // A cap reached is storage_full (an operator's to raise); the results are those of any 503.
    expect(r.json.error.code).toBe('storage_full')
    const results = r.json.error.details.results
    expect(results.map((x: any) => x.stored)).toEqual([true, true, true, false, false])
    expect(results[1].id).toBe('given-2')
    expect(results[4].id).toBe('given-5')
    for (const i of [0, 2, 3]) expect(results[i].id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7/)
    for (const x of results.slice(0, 3)) expect(x).toEqual({ id: x.id, stored: true, seq: expect.any(Number), duplicate: false })
    for (const x of results.slice(3)) expect(x).toEqual({ id: x.id, stored: false })
    expect(await h.streamCount()).toBe(before + 3)

    // The advised retry: the same events with the ids the 503 gave.
    await h.jsm.streams.update(stream, { ...info.config })
    const again = await h.call('POST', '/v1/events', { token: h.ingestToken, body: { events: events.map((e, i) => ({ ...e, id: results[i].id })) } })
    expect(again.status).toBe(202)
    expect(again.json.results.map((x: any) => x.id)).toEqual(results.map((x: any) => x.id))
    expect(again.json.results.map((x: any) => x.duplicate)).toEqual([true, true, true, false, false])
    expect(again.json.results.slice(0, 3).map((x: any) => x.seq)).toEqual(results.slice(0, 3).map((x: any) => x.seq))
    expect(await h.streamCount()).toBe(before + 5)
  })

  test('the in-flight count keeps a failed request’s events until every one of its publishes settled', async () => {
    const prefix = `${h.env.config.FANFARE_SUBJECT_PREFIX}_slow`
    const config = { ...h.env.config, FANFARE_SUBJECT_PREFIX: prefix, FANFARE_INGEST_MAX_IN_FLIGHT: 10 }
    const partitions = config.FANFARE_PARTITIONS
    // No stream captures these subjects. Partition 0's have a listener that never answers (as a
    // JetStream that does not answer in time: the publish waits for its timeout); the others have
    // none (the publish fails at once: no responders).
    const held: unknown[] = []
    const sub = h.nc.subscribe(`${prefix}.ev.0.>`, { callback: (_err, m) => void held.push(m) })
    await h.nc.flush()
    const players = (inZero: boolean, n: number) =>
      Array.from({ length: 200 }, (_, i) => `player-${i}`)
        .filter((p) => (partitionOf(`main/${p}`, partitions) === 0) === inZero)
        .slice(0, n)
    const ingest = createIngest({ config, nc: h.nc, rooms: h.deps.security.rooms, logger: createLogger('silent'), publishTimeoutMs: 1500 })
    const batch = [...players(true, 2), ...players(false, 2)].map((p) => score(p))
    let settled = false
    const first = ingest.publish(batch, rootKey('ingest')).catch((err) => err)
    void first.then(() => (settled = true))
    await until('the held publishes to arrive', () => held.length === 2)
    // The no-responders failures are back by now; the held publishes still wait.
    await Bun.sleep(300)
    expect(settled).toBe(false)
    // 4 events still count: 7 more exceed the limit of 10.
    const seven = players(false, 7).map((p) => score(p))
    expect(await ingest.publish(seven, rootKey('ingest')).catch((err) => err)).toMatchObject({ status: 503, code: 'overloaded' })
    const failed = await first
    expect(failed).toMatchObject({ status: 503, code: 'unavailable' })
    expect(failed.details.results.map((x: any) => x.stored)).toEqual([false, false, false, false])
    // Once settled, the count is back down: the same 7 are tried (and fail: no stream).
    expect(await ingest.publish(seven, rootKey('ingest')).catch((err) => err)).toMatchObject({ status: 503, code: 'unavailable' })
    sub.unsubscribe()
  })
})

describe('validation of huge bodies is bounded', () => {
  let h: ApiHarness
  beforeAll(async () => {
    h = await createHarness()
  })
  afterAll(async () => {
    await h.close()
  })

  test('100k unknown keys in an event or in its data: 422 with at most 10 problems, errors not drained', async () => {
    const keys = unknownKeys(100_000)
    const envelope = await countErrorPulls(() => h.call('POST', '/v1/events', { token: h.ingestToken, body: { type: 'score.submitted', data: {}, ...keys } }))
    expect(envelope.value.status).toBe(422)
    expect(envelope.value.json.error.code).toBe('invalid_request')
    expect(envelope.value.json.error.details.length).toBeGreaterThan(0)
    expect(envelope.value.json.error.details.length).toBeLessThanOrEqual(10)
    expect(envelope.pulled).toBeLessThan(1_000)

    const data = await countErrorPulls(() =>
      h.call('POST', '/v1/events', { token: h.ingestToken, body: { type: 'score.submitted', data: { board: 'b', player: 'p', score: 1, ...keys } } }),
    )
    expect(data.value.status).toBe(422)
    expect(data.value.json.error.code).toBe('invalid_event')
    expect(data.value.json.error.details).toHaveLength(10)
    expect(data.pulled).toBeLessThan(1_000)
  })
})
