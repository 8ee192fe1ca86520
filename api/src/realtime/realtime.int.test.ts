import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { jetstream } from '@nats-io/jetstream'
import { eq } from 'drizzle-orm'
import { channelOf, runOf, type ChangeNotice } from '../../../core/channels'
import type { NatsConnection } from '@nats-io/transport-node'
import type { Database } from '../../../core/db/client'
import { jetstreamManager } from '@nats-io/jetstream'
import { changeHistory, channelVersions } from '../../../core/db/schema'
import { liveBatchMessages } from '../../../core/live-batches'
import { pruneHistory } from '../../../stream-workers/src/runtime/history-pruner'
import { ensureStreams, topology } from '../../../core/nats'
import { subjects } from '../../../core/events'
import { testChangeFormat, type TestEnv } from '../../../core/testing/env'
import { until, WsClient } from '../../../test/e2e/harness'
import { startTestNode, UPGRADE_HEADERS, type TestNode } from '../test-support'
import { mintUserToken } from '../auth/mint'

/** The WebSocket route of a real API node against the real Postgres and NATS. */
describe('realtime over a real server', () => {
  let node: TestNode
  let env: TestEnv
  let database: Database
  let nc: NatsConnection
  let url: string

  beforeAll(async () => {
    // Leaderboards keep a short history here; chat keeps the default.
    node = await startTestNode({ FANFARE_HISTORY_SIZE_LEADERBOARD: '2' })
    ;({ env, database, nc, wsUrl: url } = node)
  })
  afterAll(() => node?.close())

  const notice = (channel: string, version: number): ChangeNotice => ({
    channel,
    version,
    epoch: 'e1',
    data: { kind: 'deleted', messageId: `m${version}` },
    at: new Date().toISOString(),
  })
  async function publishNotice(n: ChangeNotice) {
    const body = JSON.stringify(runOf(n))
    if (testChangeFormat !== 'runs') {
      // As the workers do with live batches: the run kept in change_history, published as a live batch.
      await database.db.insert(changeHistory).values({ channel: n.channel, epoch: n.epoch, version: n.version, payload: body }).onConflictDoNothing()
      for (const m of liveBatchMessages(env.config.FANFARE_SUBJECT_PREFIX, 0, [{ channel: n.channel, body }])) await jetstream(nc).publish(m.subject, m.body)
      return
    }
    await jetstream(nc).publish(subjects.change(env.config.FANFARE_SUBJECT_PREFIX, n.channel), body)
  }

  test('subscribe gets a snapshot, then change notices from NATS in version order', async () => {
    const channel = channelOf.chat('lobby')
    const c = await WsClient.open(url)
    c.send({ op: 'subscribe', ref: 's', channel })
    await until('snapshot', () => c.of(channel).length === 1)
    expect(c.of(channel)[0]).toMatchObject({ op: 'snapshot', version: 0, data: { room: 'lobby', messages: [] } })
    await publishNotice(notice(channel, 2)) // arrives early: held until 1 is there
    await publishNotice(notice(channel, 1))
    await publishNotice(notice(channel, 1)) // re-published duplicate
    await until('updates', () => c.of(channel).length === 3)
    expect(c.of(channel).map((f) => `${f.op}:${f.version}`)).toEqual(['snapshot:0', 'update:1', 'update:2'])
    c.close()
  })

  /** A subscriber that has seen versions 1-4 of `channel` published (so the history holds them). */
  async function watchFourVersions(channel: string) {
    const watcher = await WsClient.open(url)
    watcher.send({ op: 'subscribe', channel })
    await until('watcher snapshot', () => watcher.of(channel).length === 1)
    // One at a time: a leaderboard's stream keeps 2 per channel, and runs it pushed out before this
    // node's feed read them make it re-sync the channel (CI saw the watcher never reach 5 frames).
    for (const v of [1, 2, 3, 4]) {
      await publishNotice(notice(channel, v))
      await until(`watcher update ${v}`, () => watcher.of(channel).some((f) => f.op === 'update' && f.version === v))
    }
    expect(watcher.of(channel).length).toBe(5)
    return watcher
  }

  test('resume with since and epoch replays from the JetStream history, then live updates', async () => {
    const channel = channelOf.chat('resume')
    const watcher = await watchFourVersions(channel)
    const c = await WsClient.open(url)
    c.send({ op: 'subscribe', ref: 'r', channel, since: 1, epoch: 'e1' })
    await until('replay', () => c.frames.filter((f) => f.op === 'update').length === 3)
    await publishNotice(notice(channel, 5))
    await until('live', () => c.frames.filter((f) => f.op === 'update').length === 4)
    expect(c.frames.map((f) => `${f.op}:${f.version}:${f.epoch}`)).toEqual(['subscribed:1:e1', 'update:2:e1', 'update:3:e1', 'update:4:e1', 'update:5:e1'])
    expect(c.frames[0].recovered).toBe(true)
    for (const w of [watcher, c]) w.close()
  })

  test('history retention is per channel kind: a resume past what the kind keeps gets a resync snapshot', async () => {
    const jsm = await jetstreamManager(nc)
    const streams = topology(env.config).changeStreams
    expect((await jsm.streams.info(streams.leaderboard)).config.max_msgs_per_subject).toBe(2)
    expect((await jsm.streams.info(streams.chat)).config.max_msgs_per_subject).toBe(env.config.FANFARE_HISTORY_SIZE)

    const channel = channelOf.leaderboard('short')
    const watcher = await watchFourVersions(channel)
    // The read model is at version 4 of epoch e1 (as the workers would have left it).
    await database.db.insert(channelVersions).values({ channel, version: 4, epoch: 'e1' })
    // With live batches the history is Postgres', kept to the same size by the workers' pruner.
    if (testChangeFormat !== 'runs') await pruneHistory(database.db, env.config, new Date())
    const c = await WsClient.open(url)
    c.send({ op: 'subscribe', ref: 'r', channel, since: 1, epoch: 'e1' }) // needs 2..4; only 3 and 4 are kept
    await until('answer', () => c.of(channel).length === 1)
    expect(c.of(channel)[0]).toMatchObject({ op: 'snapshot', version: 4, epoch: 'e1', resync: true })
    expect(c.frames.filter((f) => f.op === 'update' || f.op === 'subscribed')).toEqual([])
    for (const w of [watcher, c]) w.close()
  })

  test('a change stream recreated (NATS lost its data) re-syncs subscribers and follows the new stream from its start', async () => {
    const channel = channelOf.chat('lost')
    await database.db.insert(channelVersions).values({ channel, version: 5, epoch: 'e1' })
    const c = await WsClient.open(url)
    c.send({ op: 'subscribe', ref: 's', channel })
    await until('snapshot', () => c.of(channel).length === 1)
    for (const v of [6, 7]) await publishNotice(notice(channel, v))
    await until('2 updates', () => c.of(channel).length === 3)
    // The stream comes back empty, numbering from 1: an ordered consumer resuming after its last
    // sequence would wait past every new notice.
    const jsm = await jetstreamManager(nc)
    await jsm.streams.delete(topology(env.config).changeStreams.chat)
    await ensureStreams(nc, env.config)
    await database.db.update(channelVersions).set({ version: 9 }).where(eq(channelVersions.channel, channel))
    for (const v of [8, 9]) await publishNotice(notice(channel, v))
    // The feed may deliver 8 and 9 from the new stream before its resync's snapshot read returns:
    // wait for both, in whichever order they came.
    const resynced = () => c.of(channel).some((f) => f.op === 'snapshot' && f.resync)
    await until('a resync and version 9', () => resynced() && c.of(channel).at(-1)?.version === 9, 15_000)
    const frames = c.of(channel).map((f) => `${f.op}:${f.version}${f.resync ? ':resync' : ''}`)
    expect(frames.slice(0, 3)).toEqual(['snapshot:5', 'update:6', 'update:7'])
    // Told plainly: a resync snapshot (notices of the lost stream may be gone), never a silent skip.
    expect(frames.some((f) => f.startsWith('snapshot:') && f.endsWith(':resync'))).toBe(true)
    await publishNotice(notice(channel, 10))
    await until('live updates on the new stream', () => c.of(channel).at(-1)?.version === 10)
    c.close()
  }, 30_000)

  test('publishing: players post chat but not scores, anonymous clients nothing; acks carry seq', async () => {
    const anon = await WsClient.open(url)
    anon.send({ op: 'publish', ref: 'c', event: { type: 'chat.message.posted', data: { room: 'lobby', user: 'ann', text: 'hi' } } })
    expect((await anon.reply('c')).error.code).toBe('unauthorized')
    anon.close()
    const ann = await WsClient.open(`${url}?token=${await mintUserToken(env.vars.FANFARE_JWT_SECRET, { sub: 'ann' })}`)
    ann.send({ op: 'publish', ref: 'c', event: { type: 'chat.message.posted', data: { room: 'lobby', text: 'hi' } } })
    expect(await ann.reply('c')).toMatchObject({ op: 'ack', duplicate: false, seq: expect.any(Number), id: expect.any(String) })
    ann.send({ op: 'publish', ref: 's', event: { type: 'score.submitted', data: { board: 'b', player: 'p', score: 1 } } })
    expect((await ann.reply('s')).error.code).toBe('forbidden')
    ann.send({ op: 'publish', ref: 'bad', event: { type: 'chat.message.posted', data: { room: 'no spaces allowed', text: 'y' } } })
    expect((await ann.reply('bad')).error.code).toBe('invalid_event')
    const trusted = await WsClient.open(`${url}?token=${env.vars.FANFARE_INGEST_TOKEN}`)
    trusted.send({ op: 'publish', ref: 's', event: { id: 'score-1', type: 'score.submitted', data: { board: 'b', player: 'p', score: 1 } } })
    expect(await trusted.reply('s')).toMatchObject({ op: 'ack', id: 'score-1', duplicate: false })
    trusted.send({ op: 'publish', ref: 's2', event: { id: 'score-1', type: 'score.submitted', data: { board: 'b', player: 'p', score: 1 } } })
    expect(await trusted.reply('s2')).toMatchObject({ op: 'ack', id: 'score-1', duplicate: true })
    ann.close()
    trusted.close()
  })

  test('a subscribe cut short by an unsubscribe or a close while the room is looked up leaves no subscription behind', async () => {
    const subscriptions = async () => {
      const r = await fetch(`${node.base}/admin/nodes`, { headers: { authorization: `Bearer ${env.vars.FANFARE_ADMIN_TOKEN}` } })
      return ((await r.json()) as { nodes: { subscriptions: number }[] }).nodes.reduce((n, node) => n + node.subscriptions, 0)
    }
    const before = await subscriptions()
    // A room this node has not looked up yet: its visibility is read from Postgres before the
    // subscription goes on, and the unsubscribe (or the close) lands in that wait.
    const c = await WsClient.open(url)
    for (let i = 0; i < 5; i++) {
      c.send({ op: 'subscribe', ref: `s${i}`, channel: channelOf.chat(`cut-${i}`) })
      c.send({ op: 'unsubscribe', ref: `u${i}`, channel: channelOf.chat(`cut-${i}`) })
    }
    for (let i = 0; i < 5; i++) {
      const gone = await WsClient.open(url)
      gone.send({ op: 'subscribe', ref: 's', channel: channelOf.chat(`closed-${i}`) })
      gone.close()
    }
    await until('every unsubscribe answered', () => c.frames.filter((f) => f.op === 'unsubscribed').length === 5)
    await Bun.sleep(300)
    // The client was told it is not subscribed: no snapshot or update may follow for those rooms.
    expect(c.frames.filter((f) => f.op === 'snapshot' || f.op === 'update')).toEqual([])
    // Only `c` is open, and it holds nothing: the closed sockets are not kept as members either.
    expect(await subscriptions()).toBe(before)
    c.close()
  })

  test('bad frames get error frames and the connection stays usable', async () => {
    const c = await WsClient.open(url)
    c.send('{not json')
    c.send({ op: 'subscribe', ref: 'x', channel: 'nope' })
    c.send({ op: 'fly', ref: 'y' })
    c.send([1, 2])
    await until('errors', () => c.frames.filter((f) => f.op === 'error').length === 4)
    expect(c.frames.map((f) => f.error?.code)).toEqual(['bad_frame', 'invalid_frame', 'unknown_op', 'bad_frame'])
    c.send({ op: 'subscribe', ref: 'ok', channel: 'leaderboard:fine' })
    await until('snapshot after errors', () => c.of('leaderboard:fine').length === 1)
    c.send({ op: 'subscribe', ref: 'again', channel: 'leaderboard:fine' })
    expect((await c.reply('again')).error.code).toBe('already_subscribed')
    c.close()
  })

  test('ping gets pong with its ref, before any other frame as well', async () => {
    const c = await WsClient.open(url)
    c.send({ op: 'ping', ref: 'p1' })
    expect(await c.reply('p1')).toEqual({ op: 'pong', ref: 'p1' })
    c.send({ op: 'ping', ref: 'p2', extra: 1 })
    expect((await c.reply('p2')).error.code).toBe('invalid_frame')
    c.close()
  })

  test('a wrong token is refused before the upgrade', async () => {
    const res = await fetch(`${node.base}/v1/ws?token=wrong-token-123456`, { headers: UPGRADE_HEADERS })
    expect(res.status).toBe(401)
    expect((await res.json()).error.code).toBe('invalid_token')
  })

  test('subscribes past the burst and the rate of one connection are refused with the wait, not served', async () => {
    const c = await WsClient.open(url)
    const channel = channelOf.leaderboard('busy')
    // 100 at once are fine (a reconnecting client resubscribing to everything); 150 in a burst are
    // not. Every command counts, even one refused for another reason (already subscribed).
    for (let i = 0; i < 150; i++) c.send({ op: 'subscribe', ref: `s${i}`, channel })
    await until('every subscribe answered', () => c.frames.filter((f) => f.op === 'error' || f.op === 'snapshot').length === 150, 20_000)
    const limited = c.frames.filter((f) => f.op === 'error' && f.error.code === 'rate_limited')
    expect(limited.length).toBeGreaterThan(20)
    expect(limited.length).toBeLessThan(150 - 99)
    expect(c.frames.filter((f) => f.op === 'error' && f.error.code === 'already_subscribed').length).toBe(149 - limited.length)
    expect(limited[0].error.details.retryAfterMs).toBeGreaterThan(0)
    c.close()
  })
})
