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
})
