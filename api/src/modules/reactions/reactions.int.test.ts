import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { jetstream } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import { channelOf, runOf, type ReactionsChange } from '../../../../core/channels'
import type { Database } from '../../../../core/db/client'
import { reactionTotals } from '../../../../core/db/schema'
import { subjects } from '../../../../core/events'
import type { TestEnv } from '../../../../core/testing/env'
import { until, WsClient } from '../../../../test/e2e/harness'
import { mintUserToken } from '../../auth/mint'
import { startTestNode, type TestNode } from '../../test-support'

const WINDOW_MS = 400

/** Reactions on a real API node (real Postgres and NATS; no worker: the tests write what a worker would). */
describe('reactions: REST, validation, and the windowed channel', () => {
  let node: TestNode
  let env: TestEnv
  let database: Database
  let nc: NatsConnection
  let base: string
  let ws: string

  beforeAll(async () => {
    node = await startTestNode({ FANFARE_REACTION_WINDOW_MS: String(WINDOW_MS) })
    ;({ env, database, nc, base, wsUrl: ws } = node)
  })
  afterAll(async () => {
    await node?.close()
  })

  const storedEvents = () => node.streamCount()
  const post = (body: unknown) =>
    fetch(`${base}/v1/events`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${env.vars.FANFARE_INGEST_TOKEN}` },
      body: JSON.stringify(body),
    })

  test('an emoji that is not exactly one emoji is 422 invalid_event over REST and WebSocket, and nothing is stored', async () => {
    const before = await storedEvents()
    // Two emojis, text, a flag and a letter, a letter alone, an emoji and text, empty.
    const bad = ['👏👏', 'hi', '🇫🇷a', 'a', '🔥 fire', '']
    for (const emoji of bad) {
      const res = await post({ type: 'reaction.sent', data: { stream: 'main', emoji } })
      expect(res.status).toBe(422)
      const body = (await res.json()) as any
      expect(body.error.code).toBe('invalid_event')
      expect(body.error.details[0]).toMatchObject({ index: 0, path: '/data/emoji' })
    }
    // One bad reaction refuses its whole request: the good one beside it is not stored either.
    const mixed = await post({ events: [{ type: 'reaction.sent', data: { stream: 'main', emoji: '👏' } }, { type: 'reaction.sent', data: { stream: 'main', emoji: '👏👏' } }] })
    expect(mixed.status).toBe(422)
    expect(((await mixed.json()) as any).error.details).toEqual([expect.objectContaining({ index: 1, path: '/data/emoji' })])

    const viewer = await WsClient.open(`${ws}?token=${await mintUserToken(env.vars.FANFARE_JWT_SECRET, { sub: 'viewer' })}`)
    for (const [i, emoji] of bad.entries()) {
      viewer.send({ op: 'publish', ref: `r${i}`, event: { type: 'reaction.sent', data: { stream: 'main', emoji } } })
      expect((await viewer.reply(`r${i}`)).error).toMatchObject({ code: 'invalid_event' })
    }
    viewer.close()
    expect(await storedEvents()).toBe(before)
    expect((await (await fetch(`${base}/v1/streams/main/reactions`)).json()) as any).toEqual({ stream: 'main', totals: {} })
  })

  test('an emoji with marks, stray joiners or tags no emoji has is refused: look-alikes cannot fill a stream with new totals', async () => {
    const before = await storedEvents()
    // Each is one grapheme that starts with an emoji, and most look like 👍; their variants are
    // endless (any run of combining marks), and each would be one more total in every snapshot.
    const lookalikes = ['👍\u0301', '👍\u0301\u0302\u0303', '👍\u200d', '👍\u{E0041}', '👍\u{1F3FD}\u0301', '🇫🇷\u0301']
    for (const emoji of lookalikes) {
      const res = await post({ type: 'reaction.sent', data: { stream: 'main', emoji } })
      expect([emoji, res.status]).toEqual([emoji, 422])
      expect(((await res.json()) as any).error.details[0]).toMatchObject({ index: 0, path: '/data/emoji' })
    }
    const viewer = await WsClient.open(`${ws}?token=${await mintUserToken(env.vars.FANFARE_JWT_SECRET, { sub: 'viewer' })}`)
    viewer.send({ op: 'publish', ref: 'l0', event: { type: 'reaction.sent', data: { stream: 'main', emoji: '👍\u0301' } } })
    expect((await viewer.reply('l0')).error).toMatchObject({ code: 'invalid_event' })
    viewer.close()
    expect(await storedEvents()).toBe(before)
    // What emoji keyboards send still passes: a pictograph in either presentation, a keycap, a
    // subdivision flag (tags that make one), a ZWJ sequence.
    for (const emoji of ['❤', '❤️', '❤︎', '©', '1⃣', '#️⃣', '🏴\u{E0067}\u{E0062}\u{E0073}\u{E0063}\u{E0074}\u{E007F}', '🧑‍🚀', '👍🏽']) {
      expect([emoji, (await post({ type: 'reaction.sent', data: { stream: 'main', emoji } })).status]).toEqual([emoji, 202])
    }
  })

  test('one emoji grapheme of any kind is accepted, from a user over WebSocket and a key over REST', async () => {
    const before = await storedEvents()
    const good = ['👏', '❤️', '🇫🇷', '1️⃣', '👍🏽', '👩‍👩‍👧', '🏳️‍🌈']
    const viewer = await WsClient.open(`${ws}?token=${await mintUserToken(env.vars.FANFARE_JWT_SECRET, { sub: 'viewer' })}`)
    for (const [i, emoji] of good.entries()) {
      viewer.send({ op: 'publish', ref: `g${i}`, event: { type: 'reaction.sent', data: { stream: 'main', emoji } } })
      expect(await viewer.reply(`g${i}`)).toMatchObject({ op: 'ack', duplicate: false })
    }
    viewer.close()
    expect((await post({ type: 'reaction.sent', data: { stream: 'main', emoji: '👏' } })).status).toBe(202)
    expect(await storedEvents()).toBe(before + good.length + 1)
  })

  test('GET /v1/streams/:stream/reactions reads the totals; an unknown stream has none; a bad name is 422', async () => {
    await database.db.insert(reactionTotals).values([
      { stream: 'show', emoji: '👏', count: 1520 },
      { stream: 'show', emoji: '❤️', count: 233 },
      { stream: 'other', emoji: '👏', count: 1 },
    ])
    const res = await fetch(`${base}/v1/streams/show/reactions`)
    expect(res.status).toBe(200)
    expect(await res.json()).toEqual({ stream: 'show', totals: { '👏': 1520, '❤️': 233 } })
    expect(await (await fetch(`${base}/v1/streams/nobody/reactions`)).json()).toEqual({ stream: 'nobody', totals: {} })
    const bad = await fetch(`${base}/v1/streams/no%20spaces/reactions`)
    expect(bad.status).toBe(422)
    expect(((await bad.json()) as any).error.code).toBe('invalid_request')
  })

  test('reactions:<stream>: snapshot { stream, totals }, then one frame per window merging its changes (from..version)', async () => {
    const channel = channelOf.reactions('live')
    await database.db.insert(reactionTotals).values([{ stream: 'live', emoji: '👏', count: 5 }])
    const c = await WsClient.open(ws)
    c.send({ op: 'subscribe', ref: 's', channel })
    await until('snapshot', () => c.of(channel).length === 1)
    expect(c.of(channel)[0]).toMatchObject({ op: 'snapshot', version: 0, epoch: '', data: { stream: 'live', totals: { '👏': 5 } } })

    // Ten batches' changes within a fraction of the window, as workers would publish them.
    const js = jetstream(nc)
    const subject = subjects.change(env.config.FANFARE_SUBJECT_PREFIX, channel)
    const started = Date.now()
    let clap = 5
    for (let v = 1; v <= 10; v++) {
      clap += v
      const data: ReactionsChange = v % 2 ? { counts: { '👏': v }, totals: { '👏': clap } } : { counts: { '👏': v, '🔥': 1 }, totals: { '👏': clap, '🔥': v / 2 } }
      await js.publish(subject, JSON.stringify(runOf({ channel, version: v, epoch: 'e1', data, at: new Date().toISOString() })))
    }
    const sentIn = Date.now() - started
    await until('the window to flush', () => c.of(channel).length >= 2, 5_000)
    await Bun.sleep(WINDOW_MS * 2)
    const updates = c.of(channel).slice(1)
    // All ten were sent well within one window: one frame, not ten.
    if (sentIn < WINDOW_MS / 2) expect(updates.length).toBe(1)
    expect(updates[0]).toMatchObject({ op: 'update', channel, from: 1, epoch: 'e1' })
    const last = updates.at(-1)
    expect(last.version).toBe(10)
    // Frames continue each other: from = previous version + 1.
    let version = 0
    const counts: Record<string, number> = {}
    const totals: Record<string, number> = { '👏': 5 }
    for (const f of updates) {
      expect(f.from ?? f.version).toBe(version + 1)
      version = f.version
      for (const [e, n] of Object.entries(f.data.counts as Record<string, number>)) counts[e] = (counts[e] ?? 0) + n
      Object.assign(totals, f.data.totals)
    }
    expect(counts).toEqual({ '👏': 55, '🔥': 5 })
    expect(totals).toEqual({ '👏': 60, '🔥': 5 })
    c.close()
  })

  test("a window's frame leaves when the window closes, not when the node's event-loop turn ends", async () => {
    // Bun writes a topic publish only at the end of the event-loop turn: a busy turn held each
    // reactions frame 40-100 ms under load (bench/findings.md). The subscriber is another process,
    // so it sees when the frame was written while this one is busy.
    const channel = channelOf.reactions('busy-turn')
    const script = `
      const ws = new WebSocket(${JSON.stringify(ws)})
      ws.onopen = () => ws.send(JSON.stringify({ op: 'subscribe', ref: 's', channel: ${JSON.stringify(channel)} }))
      ws.onmessage = (e) => {
        const f = JSON.parse(String(e.data))
        if (f.op === 'snapshot') console.log('ready')
        if (f.op === 'update') console.log(JSON.stringify({ at: performance.timeOrigin + performance.now() }))
      }`
    const child = Bun.spawn([process.execPath, '-e', script], { stdout: 'pipe', stderr: 'inherit' })
    const lines: string[] = []
    void (async () => {
      const d = new TextDecoder()
      for await (const c of child.stdout) lines.push(...d.decode(c).split('\n').filter(Boolean))
    })()
    try {
      await until('the subscriber in another process', () => lines.includes('ready'), 10_000)
      const subject = subjects.change(env.config.FANFARE_SUBJECT_PREFIX, channel)
      const data: ReactionsChange = { counts: { '👏': 1 }, totals: { '👏': 1 } }
      const t0 = performance.timeOrigin + performance.now()
      await jetstream(nc).publish(subject, JSON.stringify(runOf({ channel, version: 1, epoch: 'e1', data, at: new Date().toISOString() })))
      // The window closes about WINDOW_MS after the run arrives (well within 40 ms here). This turn
      // is held across that and across `late`'s due time, so that both run in the next turn's
      // timers, the window's first; `late` then keeps that turn busy for 300 ms.
      let busy: { start: number; end: number } | undefined
      const spin = (until: number) => {
        while (performance.timeOrigin + performance.now() < until);
      }
      setTimeout(() => spin(t0 + WINDOW_MS + 80), WINDOW_MS - 30)
      setTimeout(() => {
        const start = performance.timeOrigin + performance.now()
        spin(start + 300)
        busy = { start, end: performance.timeOrigin + performance.now() }
      }, WINDOW_MS + 60)
      await until('the frame', () => lines.some((l) => l.startsWith('{')), 5_000)
      const at = JSON.parse(lines.find((l) => l.startsWith('{'))!).at as number
      expect(busy).toBeDefined()
      // Written before the busy timer's work, not after it.
      expect(at).toBeLessThan(busy!.start + 100)
    } finally {
      child.kill()
    }
  })
})
