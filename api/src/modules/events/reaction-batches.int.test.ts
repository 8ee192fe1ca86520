import { afterEach, describe, expect, test } from 'bun:test'
import { jetstream, jetstreamManager } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import { createAckedPublisher } from '../../../../core/acked-publish'
import { decodeEvent, type StoredEvent } from '../../../../core/events'
import { connectNats, ensureStreams, topology } from '../../../../core/nats'
import { createTestEnv, type TestEnv } from '../../../../core/testing/env'
import { createReactionBatcher, MAX_REACTIONS_PER_MESSAGE } from './reaction-batches'

let env: TestEnv | undefined
let nc: NatsConnection | undefined
afterEach(async () => {
  await nc?.close()
  await env?.cleanup()
  env = nc = undefined
})

async function setup() {
  env = await createTestEnv()
  nc = await connectNats(env.vars.NATS_URL, 'batcher-test')
  await ensureStreams(nc, env.config)
  const t = topology(env.config)
  let ids = 0
  const batcher = (eventStream = t.eventStream, publishTimeoutMs = 5000) =>
    createReactionBatcher({
      publisher: createAckedPublisher(nc!, { timeoutMs: publishTimeoutMs }),
      prefix: t.prefix,
      partitions: t.partitions,
      eventStream,
      dedupWindowMs: 120_000,
      now: () => new Date(),
      newId: () => `batch-${ids++}`,
    })
  /** Every message of the event stream, decoded, with its sequence. */
  const stored = async () => {
    const n = (await (await jetstreamManager(nc!)).streams.info(t.eventStream)).state.messages
    const out: (StoredEvent & { seq: number })[] = []
    if (n === 0) return out
    const consumer = await jetstream(nc!).consumers.get(t.eventStream)
    for await (const m of await consumer.fetch({ max_messages: n, expires: 5000 })) {
      const d = decodeEvent(m.data)
      if (!d.ok) throw new Error(d.reason)
      out.push({ ...d.event, seq: m.seq })
    }
    return out
  }
  return { batcher, stored, t }
}

const reaction = (stream: string, i: number) => ({ id: `r${i}`, by: `u:viewer-${i % 7}`, data: { stream, emoji: i % 2 ? '👏' : '🔥' } })

describe('reaction batches', () => {
  test('reactions accepted together leave as one message per stream, in order, each acknowledged with its message\'s sequence', async () => {
    const { batcher, stored } = await setup()
    const b = batcher()
    const n = MAX_REACTIONS_PER_MESSAGE + 50
    const results = await Promise.all(Array.from({ length: n * 2 }, (_, i) => b.add(reaction(i % 2 ? 'odd' : 'even', i))))
    const messages = await stored()
    // Per stream: one full message and the rest in a second one.
    expect(messages.map((m) => [m.type, m.by, (m.data as { stream: string }).stream, (m.data as { reactions: unknown[] }).reactions.length]).sort()).toEqual(
      [
        ['reaction.batched', 'system', 'even', 50],
        ['reaction.batched', 'system', 'even', MAX_REACTIONS_PER_MESSAGE],
        ['reaction.batched', 'system', 'odd', 50],
        ['reaction.batched', 'system', 'odd', MAX_REACTIONS_PER_MESSAGE],
      ].sort(),
    )
    for (const stream of ['even', 'odd']) {
      const mine = messages.filter((m) => (m.data as { stream: string }).stream === stream)
      const inStore = mine.flatMap((m) => (m.data as { reactions: { id: string; by: string; emoji: string }[] }).reactions.map((r) => ({ ...r, seq: m.seq })))
      const sent = Array.from({ length: n * 2 }, (_, i) => i).filter((i) => (i % 2 ? 'odd' : 'even') === stream)
      // Every reaction once, in the order accepted, with its own id and publisher.
      expect(inStore.map((r) => r.id)).toEqual(sent.map((i) => `r${i}`))
      expect(inStore.map((r) => r.by)).toEqual(sent.map((i) => `u:viewer-${i % 7}`))
      for (const r of inStore) expect(results[Number(r.id.slice(1))]).toEqual({ id: r.id, seq: r.seq, duplicate: false })
    }
    expect(messages.every((m) => (m.data as { dedupWindowMs: number }).dedupWindowMs === 120_000)).toBe(true)
  })

  test('a reaction alone leaves at once; a failed store rejects every reaction of its message and acknowledges none', async () => {
    const { batcher, stored } = await setup()
    const b = batcher()
    expect(await b.add(reaction('solo', 1))).toMatchObject({ id: 'r1', duplicate: false })
    expect((await stored()).length).toBe(1)
    // Stored, but in a stream the workers do not read: refused as a failure, never acknowledged.
    const wrong = batcher('SOME_OTHER_STREAM')
    const outcomes = await Promise.allSettled([wrong.add(reaction('solo', 2)), wrong.add(reaction('solo', 3))])
    expect(outcomes.map((o) => o.status)).toEqual(['rejected', 'rejected'])
    expect(String((outcomes[0] as PromiseRejectedResult).reason)).toContain('expected SOME_OTHER_STREAM')
  })

  test('reactions no stream takes (no responders) or nobody acknowledges in time are rejected, never acknowledged', async () => {
    const { t } = await setup()
    const batcherOn = (prefix: string, publishTimeoutMs: number) =>
      createReactionBatcher({
        publisher: createAckedPublisher(nc!, { timeoutMs: publishTimeoutMs }),
        prefix,
        partitions: t.partitions,
        eventStream: t.eventStream,
        dedupWindowMs: 120_000,
        now: () => new Date(),
        newId: () => 'b',
      })
    const none = await Promise.allSettled([batcherOn(`${t.prefix}_none`, 5000).add(reaction('s', 1))])
    expect(none[0].status).toBe('rejected')
    expect(String((none[0] as PromiseRejectedResult).reason)).toContain('503')
    // A listener that never answers: the reaction waits for the publish timeout.
    const silent = nc!.subscribe(`${t.prefix}_silent.>`)
    await nc!.flush()
    const t0 = Date.now()
    const late = await Promise.allSettled([batcherOn(`${t.prefix}_silent`, 300).add(reaction('s', 2))])
    expect(late[0].status).toBe('rejected')
    expect(String((late[0] as PromiseRejectedResult).reason)).toContain('within 300 ms')
    expect(Date.now() - t0).toBeGreaterThanOrEqual(290)
    silent.unsubscribe()
  })
})
