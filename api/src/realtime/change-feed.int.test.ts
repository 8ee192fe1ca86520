import { afterEach, describe, expect, test } from 'bun:test'
import { AckPolicy, jetstream, jetstreamManager, type JetStreamManager } from '@nats-io/jetstream'
import { connect, type NatsConnection } from '@nats-io/transport-node'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { ChangeNotice, ChangeRun } from '../../../core/channels'
import { createLogger } from '../../../core/logger'
import { connectNats } from '../../../core/nats'
import { freePort } from '../../../core/process'
import { TEST_NATS_URL } from '../../../core/testing/env'
import { until } from '../../../core/testing/wait'
import { privateNats, type PrivateNats } from '../../../test/cluster/private-nats'
import { encodeLiveBatch, liveBatchMessages } from '../../../core/live-batches'
import { startChangeFeed, type ChangeFeed } from './change-feed'

const logger = createLogger('silent')

/** A change stream of its own, a feed following it, and what the feed delivered. */
async function setup(url: string, opts: { checkEveryMs?: number; heartbeatMs?: number; lose?: (seq: number) => boolean; perSubject?: number } = {}) {
  const id = Math.random().toString(36).slice(2, 8)
  const stream = `FEEDTEST_${id}`
  const subject = `feedtest_${id}.changes.leaderboard.b`
  const nc = await connectNats(url, 'feed-test')
  const jsm = await jetstreamManager(nc)
  const create = () => jsm.streams.add({ name: stream, subjects: [`feedtest_${id}.changes.>`], ...(opts.perSubject ? { max_msgs_per_subject: opts.perSubject } : {}) })
  await create()
  const notices: ChangeNotice[] = []
  const restarts: ChangeRun[] = []
  let resyncs = 0
  const feed = await startChangeFeed({
    nc,
    stream,
    logger,
    onNotice: (n) => notices.push(n),
    onRestart: (r) => restarts.push(r),
    onResync: () => resyncs++,
    lookBackMs: 0,
    checkEveryMs: opts.checkEveryMs,
    heartbeatMs: opts.heartbeatMs,
    lose: opts.lose,
  })
  const js = jetstream(nc)
  const publish = (version: number, epoch = 'e1') =>
    js.publish(subject, JSON.stringify({ channel: 'leaderboard:b', version, epoch, changes: [{ player: 'p', score: version, previous: null }], at: new Date().toISOString() } satisfies ChangeRun))
  return {
    nc,
    jsm,
    stream,
    feed,
    notices,
    restarts,
    resyncs: () => resyncs,
    publish,
    js,
    subject,
    create,
    versions: () => notices.map((n) => n.version),
  }
}

const cleanups: (() => Promise<void>)[] = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {})
})

const track = (feed: ChangeFeed, nc: NatsConnection, jsm?: JetStreamManager, stream?: string) =>
  cleanups.push(async () => {
    await feed.stop()
    if (jsm && stream) await jsm.streams.delete(stream).catch(() => {})
    await nc.close()
  })

describe('change feed', () => {
  test('a run restarting its channel goes to onRestart, in stream order with the notices; nothing is lost or re-synced', async () => {
    const f = await setup(TEST_NATS_URL)
    track(f.feed, f.nc, f.jsm, f.stream)
    await until('following', () => f.feed.status().following)
    await f.publish(1)
    await until('1 notice', () => f.notices.length === 1)
    const restart: ChangeRun = { channel: 'leaderboard:b', version: 1, epoch: 'e2', changes: [], at: new Date().toISOString(), restart: 'board rules changed' }
    await f.js.publish(f.subject, JSON.stringify(restart))
    await f.publish(2, 'e2')
    await until('the restart and the next notice', () => f.restarts.length === 1 && f.notices.length === 2)
    expect(f.notices.map((n) => `${n.epoch}:${n.version}`)).toEqual(['e1:1', 'e2:2'])
    expect(f.restarts).toEqual([restart])
    expect(f.resyncs()).toBe(0)
  })

  test('a consumer deleted from under it: follows again after its last sequence, nothing missed, no resync', async () => {
    const f = await setup(TEST_NATS_URL)
    track(f.feed, f.nc, f.jsm, f.stream)
    await until('following', () => f.feed.status().following)
    for (let v = 1; v <= 5; v++) await f.publish(v)
    await until('5 notices', () => f.notices.length === 5)
    for await (const c of await f.jsm.consumers.list(f.stream)) await f.jsm.consumers.delete(f.stream, c.name)
    for (let v = 6; v <= 10; v++) await f.publish(v)
    await until('10 notices', () => f.notices.length >= 10)
    await Bun.sleep(300)
    expect(f.versions()).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    expect(f.resyncs()).toBe(0)
    expect(f.feed.status().following).toBe(true)
  })

  // The live path is a plain subscription: deliveries can be lost on the way (a slow-consumer cut,
  // a route). The test hook drops them as that would; the feed must fill the gap from JetStream, or
  // re-sync, never go on silently.
  test('a delivery lost in the middle: the gap is filled from the stream, in order, no resync', async () => {
    const dropped = new Set<number>()
    const f = await setup(TEST_NATS_URL, { lose: (seq) => seq === 3 && !dropped.has(seq) && dropped.add(seq) !== undefined })
    track(f.feed, f.nc, f.jsm, f.stream)
    await until('following', () => f.feed.status().following)
    for (let v = 1; v <= 5; v++) await f.publish(v)
    await until('5 notices', () => f.notices.length >= 5)
    await Bun.sleep(300)
    expect([...dropped]).toEqual([3])
    expect(f.versions()).toEqual([1, 2, 3, 4, 5])
    expect(f.resyncs()).toBe(0)
    expect(f.feed.status().following).toBe(true)
  })

  test('the last delivery lost (nothing follows it): the heartbeat shows it, the gap is filled', async () => {
    const dropped = new Set<number>()
    const f = await setup(TEST_NATS_URL, { heartbeatMs: 300, lose: (seq) => seq === 3 && !dropped.has(seq) && dropped.add(seq) !== undefined })
    track(f.feed, f.nc, f.jsm, f.stream)
    await until('following', () => f.feed.status().following)
    for (let v = 1; v <= 3; v++) await f.publish(v)
    await until('3 notices', () => f.notices.length >= 3, 5_000)
    expect([...dropped]).toEqual([3])
    expect(f.versions()).toEqual([1, 2, 3])
    expect(f.resyncs()).toBe(0)
  })

  test('lost deliveries the stream no longer holds: the channels are re-synced', async () => {
    let cut = false
    // Two runs per channel kept: while this node is cut off, runs 3 and 4 are pushed out.
    const f = await setup(TEST_NATS_URL, { heartbeatMs: 300, perSubject: 2, lose: () => cut })
    track(f.feed, f.nc, f.jsm, f.stream)
    await until('following', () => f.feed.status().following)
    for (let v = 1; v <= 2; v++) await f.publish(v)
    await until('2 notices', () => f.notices.length >= 2)
    cut = true
    for (let v = 3; v <= 6; v++) await f.publish(v)
    cut = false
    await until('a resync', () => f.resyncs() > 0, 5_000)
    await until('the runs the stream still holds', () => f.notices.length >= 4, 5_000)
    expect(f.versions()).toEqual([1, 2, 5, 6])
    expect(f.resyncs()).toBe(1)
  })

  test('more runs than the ack window (10,000) in one go: all of them, in order', async () => {
    const f = await setup(TEST_NATS_URL)
    track(f.feed, f.nc, f.jsm, f.stream)
    await until('following', () => f.feed.status().following)
    const total = 12_000
    for (let v = 1; v <= total; v += 1000) await Promise.all(Array.from({ length: 1000 }, (_, i) => f.publish(v + i)))
    // Promptly: a node that never acked would get only the first 10,000 and then wait for the
    // watchdog (two checks, 10 s) to follow again.
    await until(`${total} notices`, () => f.notices.length >= total, 4_000)
    expect(f.versions()).toEqual(Array.from({ length: total }, (_, i) => i + 1))
    expect(f.resyncs()).toBe(0)
  }, 60_000)

  describe('live batches', () => {
    /** One worker batch's runs for `channels`, one change each at `version`, as the workers publish them. */
    const batchOf = (prefix: string, channels: string[], version: number) =>
      liveBatchMessages(
        prefix,
        3,
        channels.map((channel) => ({ channel, body: JSON.stringify({ channel, version, epoch: 'e1', changes: [{ player: 'p', score: version, previous: null }], at: '' } satisfies ChangeRun) })),
      )
    const channels = ['leaderboard:b', 'leaderboard:c', 'leaderboard:d']
    const byChannel = (notices: ChangeNotice[]) => Object.fromEntries(channels.map((c) => [c, notices.filter((n) => n.channel === c).map((n) => n.version)]))

    test('one message carries several channels: every run handed on, in order; a restart run in it goes to onRestart', async () => {
      const f = await setup(TEST_NATS_URL)
      track(f.feed, f.nc, f.jsm, f.stream)
      await until('following', () => f.feed.status().following)
      const prefix = f.subject.split('.')[0]
      for (let v = 1; v <= 3; v++) {
        const messages = batchOf(prefix, channels, v)
        expect(messages.map((m) => m.subject)).toEqual([`${prefix}.changes.leaderboard._batch.3`])
        for (const m of messages) await f.js.publish(m.subject, m.body)
      }
      const restart: ChangeRun = { channel: 'leaderboard:c', version: 3, epoch: 'e2', changes: [], at: '', restart: 'board rules changed' }
      await f.js.publish(`${prefix}.changes.leaderboard._batch.3`, JSON.stringify({ runs: [restart, { channel: 'leaderboard:b', version: 4, epoch: 'e1', changes: [{ player: 'p', score: 4, previous: null }], at: '' }] }))
      await until('10 notices and the restart', () => f.notices.length >= 10 && f.restarts.length === 1)
      expect(byChannel(f.notices)).toEqual({ 'leaderboard:b': [1, 2, 3, 4], 'leaderboard:c': [1, 2, 3], 'leaderboard:d': [1, 2, 3] })
      expect(f.restarts).toEqual([restart])
      expect(f.resyncs()).toBe(0)
    })

    // Uncompressed (a deployment of the last version) and compressed (the latest format: 30 channels
    // make the message long enough to be compressed).
    test.each([
      ['batches', channels],
      ['compressed', Array.from({ length: 30 }, (_, i) => `leaderboard:z${i}`)],
    ] as const)('a lost batch message (%s) is seen by its stream sequence and filled from the stream: every channel in it, no resync', async (format, names) => {
      const dropped = new Set<number>()
      const f = await setup(TEST_NATS_URL, { lose: (seq) => seq === 2 && !dropped.has(seq) && dropped.add(seq) !== undefined })
      track(f.feed, f.nc, f.jsm, f.stream)
      await until('following', () => f.feed.status().following)
      const prefix = f.subject.split('.')[0]
      for (let v = 1; v <= 3; v++) {
        for (const m of batchOf(prefix, [...names], v)) {
          const body = encodeLiveBatch(m.body, format === 'compressed')
          expect(typeof body === 'string').toBe(format === 'batches')
          await f.js.publish(m.subject, body)
        }
      }
      await until(`${names.length * 3} notices`, () => f.notices.length >= names.length * 3)
      await Bun.sleep(300)
      expect([...dropped]).toEqual([2])
      for (const c of names) expect(f.notices.filter((n) => n.channel === c).map((n) => n.version)).toEqual([1, 2, 3])
      expect(f.resyncs()).toBe(0)
    })

    test('an unreadable message (damaged, or a format this node does not read): re-synced, never skipped silently; the runs after it handed on', async () => {
      const f = await setup(TEST_NATS_URL)
      track(f.feed, f.nc, f.jsm, f.stream)
      await until('following', () => f.feed.status().following)
      const prefix = f.subject.split('.')[0]
      for (const m of batchOf(prefix, channels, 1)) await f.js.publish(m.subject, m.body)
      await until('3 notices', () => f.notices.length >= 3)
      expect(f.resyncs()).toBe(0)
      // A zstd frame whose content is no JSON, then one that is no frame at all.
      await f.js.publish(`${prefix}.changes.leaderboard._batch.3`, Bun.zstdCompressSync('{"runs":[{"channel":'))
      await until('a resync', () => f.resyncs() === 1)
      await f.js.publish(`${prefix}.changes.leaderboard._batch.3`, new Uint8Array([0x28, 0xb5, 0x2f, 0xfd, 0, 1, 2]))
      await until('a second resync', () => f.resyncs() === 2)
      for (const m of batchOf(prefix, channels, 2)) await f.js.publish(m.subject, m.body)
      await until('6 notices', () => f.notices.length >= 6)
      expect(byChannel(f.notices)).toEqual({ 'leaderboard:b': [1, 2], 'leaderboard:c': [1, 2], 'leaderboard:d': [1, 2] })
    })

    test('lost batch messages the stream no longer holds: re-synced, never silent', async () => {
      let cut = false
      // One message kept per subject: batches 2 and 3 are on the same partition subject, 2 is pushed out.
      const f = await setup(TEST_NATS_URL, { heartbeatMs: 300, perSubject: 1, lose: () => cut })
      track(f.feed, f.nc, f.jsm, f.stream)
      await until('following', () => f.feed.status().following)
      const prefix = f.subject.split('.')[0]
      for (const m of batchOf(prefix, channels, 1)) await f.js.publish(m.subject, m.body)
      await until('3 notices', () => f.notices.length >= 3)
      cut = true
      for (let v = 2; v <= 3; v++) for (const m of batchOf(prefix, channels, v)) await f.js.publish(m.subject, m.body)
      cut = false
      await until('a resync', () => f.resyncs() > 0, 5_000)
      await until('the batch the stream still holds', () => f.notices.length >= 6, 5_000)
      expect(byChannel(f.notices)).toEqual({ 'leaderboard:b': [1, 3], 'leaderboard:c': [1, 3], 'leaderboard:d': [1, 3] })
      expect(f.resyncs()).toBe(1)
    })
  })

  test('stops at once, also right after it started', async () => {
    const f = await setup(TEST_NATS_URL)
    const started = Date.now()
    await f.feed.stop()
    expect(Date.now() - started).toBeLessThan(2000)
    expect(f.feed.status()).toMatchObject({ following: false, reason: 'stopped' })
    await f.jsm.streams.delete(f.stream)
    await f.nc.close()
  })

  describe('on a private nats-server', () => {
    let nats: PrivateNats | undefined
    const dirs: string[] = []
    afterEach(async () => {
      await nats?.stop()
      for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true })
    })
    const storeDir = () => {
      const d = mkdtempSync(join(tmpdir(), 'fanfare-feed-'))
      dirs.push(d)
      return d
    }

    /**
     * A feed on a private nats-server that has delivered 3 notices, then that server restarted on
     * its port with an empty store: the feed's stream and its messages are gone.
     */
    const feedOnLostStream = async () => {
      const { f, port, server } = await followingThree()
      await server.stop()
      nats = privateNats({ port, storeDir: storeDir() })
      await nats.start()
      return f
    }

    /** A feed on a private nats-server (`nats`, on `port`) that has delivered 3 notices. */
    const followingThree = async () => {
      const port = freePort()
      const server = (nats = privateNats({ port, storeDir: storeDir() }))
      await server.start()
      const f = await setup(server.url)
      track(f.feed, f.nc)
      await until('following', () => f.feed.status().following)
      for (let v = 1; v <= 3; v++) await f.publish(v)
      await until('3 notices', () => f.notices.length === 3)
      return { f, port, server }
    }

    test('NATS restarts: not following while it is down, then follows again from its last sequence', async () => {
      const { f, server } = await followingThree()
      await server.stop()
      await until('not following while NATS is down', () => !f.feed.status().following, 10_000)
      await server.start()
      // A publisher that was waiting for NATS (a worker's outbox sweeper) stores the next runs.
      const other = await connect({ servers: server.url })
      const js = jetstream(other)
      for (let v = 4; v <= 8; v++) await js.publish(`${f.stream.replace('FEEDTEST_', 'feedtest_')}.changes.leaderboard.b`, JSON.stringify({ channel: 'leaderboard:b', version: v, epoch: 'e1', changes: [{ player: 'p', score: v, previous: null }], at: '' }))
      await other.close()
      await until('following again', () => f.feed.status().following, 15_000)
      await until('8 notices', () => f.notices.length >= 8, 15_000).catch((err) => {
        throw new Error(`${(err as Error).message}: got ${f.versions()}, status ${JSON.stringify(f.feed.status())}`)
      })
      await Bun.sleep(300)
      expect(f.versions()).toEqual([1, 2, 3, 4, 5, 6, 7, 8])
      expect(f.resyncs()).toBe(0)
    }, 60_000)

    test('NATS comes back without its data and the stream is recreated later: resync, then the new stream from its start', async () => {
      const f = await feedOnLostStream()
      // While the stream does not exist the feed cannot know which stream it would read: it must
      // not take the unknown for "the same" and must say it is not following.
      await Bun.sleep(1500)
      expect(f.feed.status().following).toBe(false)
      await f.create()
      for (let v = 1; v <= 2; v++) await f.publish(v, 'e2')
      await until('the new stream followed', () => f.notices.filter((n) => n.epoch === 'e2').length === 2, 15_000)
      expect(f.resyncs()).toBe(1)
      expect(f.feed.status().following).toBe(true)
    }, 60_000)

    test('a recreated stream the feed cannot follow at its first try (CI, under load) still re-syncs once it does', async () => {
      const f = await feedOnLostStream()
      await Bun.sleep(1500)
      // The new stream takes one consumer, and one is there: the feed reads the new identity, then
      // fails to make its consumer, and tries again until the test lets it.
      await f.jsm.streams.add({ name: f.stream, subjects: [`${f.subject.split('.')[0]}.changes.>`], max_consumers: 1 })
      await f.jsm.consumers.add(f.stream, { durable_name: 'blocker', ack_policy: AckPolicy.None })
      await until('a refused try', () => f.feed.status().reason?.includes('maximum consumers') === true, 15_000)
      await f.jsm.consumers.delete(f.stream, 'blocker')
      for (let v = 1; v <= 2; v++) await f.publish(v, 'e2')
      await until('the new stream followed', () => f.notices.filter((n) => n.epoch === 'e2').length === 2, 15_000)
      expect(f.resyncs()).toBe(1)
    }, 60_000)
  })
})
