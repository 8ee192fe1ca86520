import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { jetstream } from '@nats-io/jetstream'
import { and, eq, sql } from 'drizzle-orm'
import { channelOf, type ChangeRun } from '../../../core/channels'
import { changeHistory, channelVersions } from '../../../core/db/schema'
import { liveBatchMessages } from '../../../core/live-batches'
import { until, WsClient } from '../../../test/e2e/harness'
import { startTestNode, type TestNode } from '../test-support'
import { postgresHistoryReader } from './history'

/**
 * Live batches on a real API node: the live path takes live batches (several channels per
 * message, on a partition subject), and resumes are served from Postgres (change_history), since
 * the change streams no longer hold a channel's runs on its own subject. The test stands in for the
 * workers: each commit writes the run and the channel's version as a batch statement does, then
 * publishes it as a live batch.
 */
describe('live batches: history from Postgres', () => {
  let node: TestNode
  beforeAll(async () => {
    node = await startTestNode()
  })
  afterAll(() => node?.close())

  const runOf = (channel: string, version: number, count = 1): ChangeRun => ({
    channel,
    version,
    epoch: 'e1',
    at: new Date().toISOString(),
    changes: Array.from({ length: count }, (_, i) => ({ kind: 'deleted' as const, messageId: `m${version + i}` })),
  })
  /** One worker batch: its runs kept in change_history, the channels' versions moved, then one live batch published. */
  async function commit(runs: ChangeRun[]) {
    const db = node.database.db
    for (const r of runs) {
      await db.insert(changeHistory).values({ channel: r.channel, epoch: r.epoch, version: r.version, payload: JSON.stringify(r) })
      const last = r.version + r.changes.length - 1
      await db.insert(channelVersions).values({ channel: r.channel, version: last, epoch: r.epoch }).onConflictDoUpdate({ target: channelVersions.channel, set: { version: sql`greatest(${channelVersions.version}, ${last})` } })
    }
    const messages = liveBatchMessages(node.env.config.FANFARE_SUBJECT_PREFIX, 0, runs.map((r) => ({ channel: r.channel, body: JSON.stringify(r) })))
    for (const m of messages) await jetstream(node.nc).publish(m.subject, m.body)
  }

  test('a resume is served from Postgres history, then live updates from live batches; several channels per message', async () => {
    const a = channelOf.chat('pg-a')
    const b = channelOf.chat('pg-b')
    const watcher = await WsClient.open(node.wsUrl)
    for (const channel of [a, b]) watcher.send({ op: 'subscribe', channel })
    await until('watcher snapshots', () => watcher.of(a).length === 1 && watcher.of(b).length === 1)
    // Four batches, each carrying both channels; the third holds a run of two versions of `a`.
    await commit([runOf(a, 1), runOf(b, 1)])
    await commit([runOf(a, 2), runOf(b, 2)])
    await commit([runOf(a, 3, 2), runOf(b, 3)])
    await until('watcher updates', () => watcher.of(a).length === 5 && watcher.of(b).length === 4)
    expect(watcher.of(a).map((f) => `${f.op}:${f.version}`)).toEqual(['snapshot:0', 'update:1', 'update:2', 'update:3', 'update:4'])

    // Resuming from 3: the run 3-4 holds the first version it needs.
    const c = await WsClient.open(node.wsUrl)
    c.send({ op: 'subscribe', ref: 'r', channel: a, since: 3, epoch: 'e1' })
    c.send({ op: 'subscribe', ref: 's', channel: b, since: 1, epoch: 'e1' })
    const framesOf = (channel: string) => c.frames.filter((f) => f.channel === channel)
    await until('replays', () => framesOf(a).length === 2 && framesOf(b).length === 3)
    await commit([runOf(a, 5), runOf(b, 4)])
    await until('live', () => framesOf(a).length === 3 && framesOf(b).length === 4)
    expect(framesOf(a).map((f) => `${f.op}:${f.version}:${f.epoch}`)).toEqual(['subscribed:3:e1', 'update:4:e1', 'update:5:e1'])
    expect(framesOf(b).map((f) => `${f.op}:${f.version}:${f.epoch}`)).toEqual(['subscribed:1:e1', 'update:2:e1', 'update:3:e1', 'update:4:e1'])
    expect(framesOf(a)[0].recovered).toBe(true)
    for (const w of [watcher, c]) w.close()
  })

  test('a resume past what Postgres keeps gets a resync snapshot, never a gap', async () => {
    const a = channelOf.chat('pg-pruned')
    const watcher = await WsClient.open(node.wsUrl)
    watcher.send({ op: 'subscribe', channel: a })
    await until('watcher snapshot', () => watcher.of(a).length === 1)
    for (let v = 1; v <= 4; v++) await commit([runOf(a, v)])
    await until('watcher updates', () => watcher.of(a).length === 5)
    // The pruner took versions 1 and 2.
    await node.database.db.delete(changeHistory).where(and(eq(changeHistory.channel, a), sql`${changeHistory.version} <= 2`))
    const c = await WsClient.open(node.wsUrl)
    c.send({ op: 'subscribe', ref: 'r', channel: a, since: 1, epoch: 'e1' })
    await until('answer', () => c.of(a).length === 1)
    expect(c.of(a)[0]).toMatchObject({ op: 'snapshot', version: 4, epoch: 'e1', resync: true })
    for (const w of [watcher, c]) w.close()
  })

  test('the reader: per epoch, the run holding after + 1 and every later one, newer notices only', async () => {
    const ch = channelOf.chat('pg-reader')
    const db = node.database.db
    const put = (epoch: string, version: number, count: number) =>
      db.insert(changeHistory).values({ channel: ch, epoch, version, payload: JSON.stringify({ ...runOf(ch, version, count), epoch }) })
    await put('e0', 1, 3)
    await put('e1', 1, 2)
    await put('e1', 3, 3)
    await put('e1', 6, 1)
    const read = postgresHistoryReader(db, node.env.config)
    const seen = async (after: number) => (await read(ch, after)).map((n) => `${n.epoch}@${n.version}`)
    expect(await seen(3)).toEqual(['e1@4', 'e1@5', 'e1@6'])
    expect(await seen(0)).toEqual(['e0@1', 'e0@2', 'e0@3', 'e1@1', 'e1@2', 'e1@3', 'e1@4', 'e1@5', 'e1@6'])
    expect(await seen(6)).toEqual([])
    expect(await read(channelOf.chat('pg-none'), 0)).toEqual([])
  })
})
