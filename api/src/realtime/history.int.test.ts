import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { jetstream, jetstreamManager, type JetStreamManager } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import { channelOf, runOf } from '../../../core/channels'
import { subjects } from '../../../core/events'
import { connectNats, ensureStreams, topology } from '../../../core/nats'
import { createTestEnv, type TestEnv } from '../../../core/testing/env'
import { historyReader } from './history'

/** The shared history reader against the real NATS. */
describe('history reader', () => {
  let env: TestEnv
  let nc: NatsConnection
  let jsm: JetStreamManager
  beforeAll(async () => {
    env = await createTestEnv()
    nc = await connectNats(env.vars.NATS_URL, 'history-test')
    jsm = await ensureStreams(nc, env.config)
  })
  afterAll(async () => {
    await nc?.close()
    await env?.cleanup()
  })

  const consumersOf = async (stream: string) => {
    const names: string[] = []
    for await (const c of await jsm.consumers.list(stream)) names.push(c.name)
    return names
  }

  test('reads the kept notices after a version, and leaves no consumer behind, even when it times out', async () => {
    const t = topology(env.config)
    const channel = channelOf.chat('hist')
    for (let v = 1; v <= 5; v++) {
      const n = { channel, version: v, epoch: 'e1', data: { kind: 'deleted' as const, messageId: `m${v}` }, at: '' }
      await jetstream(nc).publish(subjects.change(t.prefix, channel), JSON.stringify(runOf(n)))
    }
    const read = historyReader({ nc, streams: t.changeStreams, prefix: t.prefix })
    expect((await read(channel, 2)).map((n) => n.version)).toEqual([3, 4, 5])
    expect(await consumersOf(t.changeStreams.chat)).toEqual([])

    // A read whose deadline has already passed fails, and still deletes its consumer.
    const hurried = historyReader({ nc, streams: t.changeStreams, prefix: t.prefix, timeoutMs: -1 })
    await expect(hurried(channel, 0)).rejects.toThrow(/timed out/)
    expect(await consumersOf(t.changeStreams.chat)).toEqual([])
  })

  test('a channel read again costs only the runs stored since: none read (and no consumer) when nothing new, the same notices as a fresh read', async () => {
    // A resume one version behind read the channel's whole kept history (up to
    // FANFARE_HISTORY_SIZE runs, a consumer made and deleted) each time: one subscribe frame, then
    // an unsubscribe, again and again, made a node read ~1,000 messages a frame from JetStream.
    const t = topology(env.config)
    const channel = channelOf.chat('hist-again')
    const put = async (from: number, to: number) => {
      for (let v = from; v <= to; v++) {
        const n = { channel, version: v, epoch: 'e1', data: { kind: 'deleted' as const, messageId: `m${v}` }, at: '' }
        await jetstream(nc).publish(subjects.change(t.prefix, channel), JSON.stringify(runOf(n)))
      }
    }
    await put(1, 300)
    const reader = await connectNats(env.vars.NATS_URL, 'history-reader')
    try {
      const read = historyReader({ nc: reader, streams: t.changeStreams, prefix: t.prefix })
      const received = async <T>(fn: () => Promise<T>) => {
        await reader.flush()
        const before = reader.stats().inMsgs
        const value = await fn()
        await reader.flush()
        return { value, msgs: reader.stats().inMsgs - before }
      }
      const first = await received(() => read(channel, 298))
      expect(first.value.map((n) => n.version)).toEqual([299, 300])
      expect(first.msgs).toBeGreaterThanOrEqual(300)
      const again = await received(() => read(channel, 299))
      expect(again.value.map((n) => n.version)).toEqual([300])
      expect(again.msgs).toBeLessThan(5)
      await put(301, 303)
      const more = await received(() => read(channel, 299))
      expect(more.value.map((n) => n.version)).toEqual([300, 301, 302, 303])
      expect(more.msgs).toBeLessThan(15)
      const fresh = historyReader({ nc, streams: t.changeStreams, prefix: t.prefix })
      expect(await read(channel, 0)).toEqual(await fresh(channel, 0))
      expect(await consumersOf(t.changeStreams.chat)).toEqual([])

      // Bounded: the newest `keepNotices` of a channel (older ones are then a hole: a snapshot),
      // and `maxBytes` in all (past it, channels are read whole again).
      const few = historyReader({ nc: reader, streams: t.changeStreams, prefix: t.prefix, keepNotices: 10 })
      expect((await few(channel, 0)).length).toBe(303)
      const kept = await received(() => few(channel, 0))
      expect(kept.value.map((n) => n.version)).toEqual(Array.from({ length: 10 }, (_, i) => 294 + i))
      expect(kept.msgs).toBeLessThan(5)
      const small = historyReader({ nc: reader, streams: t.changeStreams, prefix: t.prefix, maxBytes: 1000 })
      await small(channel, 299)
      expect((await received(() => small(channel, 299))).msgs).toBeGreaterThanOrEqual(303)
    } finally {
      await reader.close()
    }
  })
})
