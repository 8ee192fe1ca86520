import { afterEach, describe, expect, test } from 'bun:test'
import type { EventInput } from '../../../../core/events'
import { createLogger } from '../../../../core/logger'
import { until } from '../../../../core/testing/wait'
import type { Principal } from '../../auth/principal'
import { startViewerSampler, USERS_PER_SAMPLE, type LiveStream, type ViewerSampler } from './sampler'

/** The sampler's world: who is where, which streams are live, what got published (and whether publishing fails). */
function world(node = 'node-b') {
  const w = {
    peers: [] as string[],
    totals: new Map<string, { connections: number; users: string[] }>(),
    live: new Map<string, LiveStream>(),
    published: [] as { events: EventInput[]; by: Principal }[],
    failing: false,
    sampler: undefined as ViewerSampler | undefined,
    start(opts: { warmupMs?: number } = {}) {
      w.sampler = startViewerSampler({
        presence: { node, peers: () => w.peers, totals: (c) => w.totals.get(c) ?? { connections: 0, users: [] } },
        ingest: {
          publish: async (events, by) => {
            if (w.failing) throw new Error('NATS down')
            w.published.push({ events, by })
            return []
          },
        },
        liveStreams: async () => new Map(w.live),
        logger: createLogger('silent'),
        intervalMs: 10,
        warmupMs: opts.warmupMs ?? 0,
      })
      return w
    },
    samples: () => w.published.flatMap((p) => p.events.map((e) => e.data as { stream: string; viewers: number; users: string[] })),
  }
  return w
}
let current: ReturnType<typeof world> | undefined
afterEach(async () => {
  await current?.sampler?.stop()
  current = undefined
})
const rounds = (n = 5) => Bun.sleep(10 * n + 20)

describe('viewer sampler', () => {
  test('samples live streams when their count changes or new users appear, as the system principal; nothing otherwise', async () => {
    const w = (current = world())
    w.live.set('tv', { startedAt: 't1', viewers: 0 })
    w.totals.set('stream:tv', { connections: 3, users: ['ann', 'bob'] })
    w.start()
    await until('first sample', () => w.samples().length === 1)
    expect(w.samples()).toEqual([{ stream: 'tv', viewers: 3, users: ['ann', 'bob'] }])
    expect(w.published[0].by).toMatchObject({ kind: 'key', root: 'system' })
    expect(w.published[0].events[0].id).toMatch(/^node-b:/)
    await rounds()
    expect(w.samples()).toHaveLength(1)
    // Same count, one new user: a sample with only that user.
    w.totals.set('stream:tv', { connections: 3, users: ['ann', 'bob', 'cat'] })
    await until('second sample', () => w.samples().length === 2)
    expect(w.samples()[1]).toEqual({ stream: 'tv', viewers: 3, users: ['cat'] })
    // Everyone left: the channel has no presence any more, and the 0 is written.
    w.totals.delete('stream:tv')
    await until('third sample', () => w.samples().length === 3)
    expect(w.samples()[2]).toEqual({ stream: 'tv', viewers: 0, users: [] })
  })

  test('only the node with the lowest id samples; it takes over when the lower one is gone, from the viewers the model holds', async () => {
    const w = (current = world('node-b'))
    w.peers = ['node-a']
    w.live.set('tv', { startedAt: 't1', viewers: 4 })
    w.totals.set('stream:tv', { connections: 0, users: [] })
    w.start()
    await rounds()
    expect(w.samples()).toEqual([])
    // node-a died (presence dropped it): node-b samples; the model says 4 viewers, presence 0.
    w.peers = ['node-c']
    await until('takeover sample', () => w.samples().length === 1)
    expect(w.samples()).toEqual([{ stream: 'tv', viewers: 0, users: [] }])
  })

  test('streams that are not live are not sampled; a new broadcast sends its users again', async () => {
    const w = (current = world())
    w.totals.set('stream:old', { connections: 7, users: ['zed'] })
    w.totals.set('stream:tv', { connections: 1, users: ['ann'] })
    w.live.set('tv', { startedAt: 't1', viewers: 0 })
    w.start()
    await until('sample', () => w.samples().length === 1)
    await rounds()
    expect(w.samples().map((s) => s.stream)).toEqual(['tv'])
    w.live.set('tv', { startedAt: 't2', viewers: 0 })
    await until('new broadcast sample', () => w.samples().length === 2)
    expect(w.samples()[1]).toEqual({ stream: 'tv', viewers: 1, users: ['ann'] })
  })

  test(`more than ${USERS_PER_SAMPLE} new users make several events; a failed publish is sent again next round`, async () => {
    const w = (current = world())
    const users = Array.from({ length: USERS_PER_SAMPLE * 2 + 1 }, (_, i) => `u${i}`)
    w.live.set('tv', { startedAt: 't1', viewers: 0 })
    w.totals.set('stream:tv', { connections: users.length, users })
    w.failing = true
    w.start()
    await rounds()
    expect(w.samples()).toEqual([])
    w.failing = false
    await until('samples', () => w.samples().length === 3)
    expect(w.samples().map((s) => s.users.length)).toEqual([USERS_PER_SAMPLE, USERS_PER_SAMPLE, 1])
    expect(new Set(w.samples().flatMap((s) => s.users)).size).toBe(users.length)
    await rounds()
    expect(w.samples()).toHaveLength(3)
  })

  test('a node samples only after its warm-up (until then it may not have heard from its peers)', async () => {
    const w = (current = world())
    w.live.set('tv', { startedAt: 't1', viewers: 0 })
    w.totals.set('stream:tv', { connections: 2, users: [] })
    w.start({ warmupMs: 300 })
    await Bun.sleep(200)
    expect(w.samples()).toEqual([])
    await until('sample after warm-up', () => w.samples().length === 1)
  })
})
