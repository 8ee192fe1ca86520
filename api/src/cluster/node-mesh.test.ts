import { afterEach, describe, expect, test } from 'bun:test'
import type { Msg, NatsConnection } from '@nats-io/transport-node'
import { createLogger } from '../../../core/logger'
import type { SubscriptionWatch } from '../../../core/nats-subscriptions'
import { until } from '../../../core/testing/wait'
import { pack, startNodeMesh, type DropReason, type MeshRun, type NodeMeshOptions } from './node-mesh'

const logger = createLogger('silent')

/**
 * An in-process bus in place of core NATS, for the mesh's logic alone (the features' integration
 * tests run it over a real NATS): messages are delivered asynchronously in the order sent, and a
 * test decides which are lost on the way.
 */
function createBus() {
  const subs = new Map<string, Set<(data: string) => void>>()
  let lose: (from: string, subject: string, data: string) => boolean = () => false
  const sent: { from: string; subject: string; data: string }[] = []
  return {
    sent,
    /** Which messages are lost from now on. */
    losing(f: typeof lose) {
      lose = f
    },
    connect(from: string) {
      const statuses: { type: string }[] = []
      let wake: (() => void) | undefined
      let closed = false
      const nc = {
        isClosed: () => closed,
        publish(subject: string, data: string) {
          sent.push({ from, subject, data })
          if (lose(from, subject, data)) return
          for (const deliver of subs.get(subject) ?? []) queueMicrotask(() => deliver(data))
        },
        flush: async () => {},
        async *status() {
          for (;;) {
            while (statuses.length > 0) yield statuses.shift()!
            if (closed) return
            await new Promise<void>((r) => (wake = r))
          }
        },
      } as unknown as NatsConnection
      const subscriptions: SubscriptionWatch = {
        subscribe(subject, opts) {
          const deliver = (data: string) => opts.onMessage({ json: () => JSON.parse(data), string: () => data } as Msg)
          if (!subs.has(subject)) subs.set(subject, new Set())
          subs.get(subject)!.add(deliver)
          return { unsubscribe: () => void subs.get(subject)?.delete(deliver) }
        },
        denied: () => [],
        stop: () => {},
      }
      return {
        nc,
        subscriptions,
        /** A status event of the connection (`disconnect`, `reconnect`). */
        status(type: string) {
          statuses.push({ type })
          wake?.()
        },
        close() {
          closed = true
          wake?.()
        },
      }
    },
  }
}

type Delta = { set: [string, number][] }
type Full = { state: [string, number][] }

/** A node sharing a map of numbers through the mesh, two entries a message at most. */
function kvNode(bus: ReturnType<typeof createBus>, node: string, { inc, keepLastRun, ...opts }: Partial<NodeMeshOptions<Delta, Full>> & { inc?: string; keepLastRun?: boolean } = {}) {
  const conn = bus.connect(node)
  const mine = new Map<string, number>()
  const pending: [string, number][] = []
  /** What this node holds of each run of the others, by node (or node/inc for a retired run). */
  const held = new Map<string, Map<string, number>>()
  const keyOf = (run: MeshRun) => (run.current ? run.node : `${run.node}/${run.inc}`)
  const events: string[] = []
  const drops: { run: MeshRun; reason: DropReason }[] = []
  const mesh = startNodeMesh<Delta, Full>({
    nc: conn.nc,
    subscriptions: conn.subscriptions,
    subject: 't.node',
    wantSubject: 't.want',
    name: 'test',
    node,
    inc: inc ?? crypto.randomUUID().slice(0, 8),
    ttlMs: 400,
    heartbeatMs: 40,
    flushMs: 10,
    cutOff: 'drop',
    deltas: () => pack(pending.splice(0), () => 1, 2).map((set) => ({ set })),
    full: () => {
      const parts = pack([...mine], () => 1, 2).map((state) => ({ state }))
      return parts.length > 0 ? parts : [{ state: [] }]
    },
    delta: (from, d, inOrder) => {
      events.push(`delta ${from} ${inOrder}`)
      if (!inOrder) return
      const of = held.get(from) ?? new Map<string, number>()
      for (const [k, v] of d.set) of.set(k, v)
      held.set(from, of)
    },
    replace: (from, parts) => {
      events.push(`replace ${from} ${parts.length}`)
      held.set(from, new Map(parts.flatMap((p) => p.state)))
    },
    drop: (run, reason) => {
      drops.push({ run, reason })
      held.delete(keyOf(run))
    },
    ...(keepLastRun
      ? {
          retire: (run: MeshRun, saidBye: boolean) => {
            events.push(`retire ${run.node} ${saidBye}`)
            const of = held.get(run.node)
            held.delete(run.node)
            if (of) held.set(keyOf(run), of)
          },
        }
      : {}),
    logger,
    ...opts,
  })
  return {
    conn,
    mesh,
    held,
    events,
    drops,
    set(k: string, v: number) {
      mine.set(k, v)
      pending.push([k, v])
    },
    /** What this node holds of `node`, as an object. */
    of: (other: string) => Object.fromEntries(held.get(other) ?? []),
    stop: async () => {
      await mesh.stop()
      conn.close()
    },
  }
}

const running: { stop: () => Promise<void> }[] = []
const start = (...args: Parameters<typeof kvNode>) => {
  const n = kvNode(...args)
  running.push(n)
  return n
}
afterEach(async () => {
  for (const n of running.splice(0)) await n.stop()
})

describe('pack', () => {
  test('fills each list up to the most, and gives an item larger than that a list of its own', () => {
    expect(pack([1, 2, 3, 9, 1], (n) => n, 5)).toEqual([[1, 2], [3], [9], [1]])
    expect(pack([], () => 1, 5)).toEqual([])
  })
})

describe('node mesh', () => {
  test('a newcomer gets every node’s full state, reassembled from its parts', async () => {
    const bus = createBus()
    const a = start(bus, 'a')
    for (const [k, v] of [['x', 1], ['y', 2], ['z', 3], ['w', 4], ['v', 5]] as const) a.set(k, v)
    a.mesh.flush()
    const b = start(bus, 'b')
    await until('b holds a', () => b.of('a').v === 5)
    expect(b.of('a')).toEqual({ x: 1, y: 2, z: 3, w: 4, v: 5 })
    // Five entries, two a message: one full state in three parts.
    expect(b.events.filter((e) => e.startsWith('replace a'))).toEqual(['replace a 3'])
    expect(b.mesh.peers()).toEqual(['a'])
  })

  test('a full state missing a part is never applied: it is asked for again and then replaces the whole', async () => {
    const bus = createBus()
    const a = start(bus, 'a')
    for (const [k, v] of [['x', 1], ['y', 2], ['z', 3]] as const) a.set(k, v)
    a.mesh.flush()
    let lost = 0
    // The second part of the first full state is lost.
    bus.losing((from, subject, data) => from === 'a' && data.includes('"type":"full"') && data.includes('"part":1') && lost++ === 0)
    const b = start(bus, 'b')
    await until('b holds a', () => b.of('a').z === 3)
    expect(lost).toBeGreaterThanOrEqual(2)
    expect(b.events.filter((e) => e.startsWith('replace'))).toEqual(['replace a 2'])
    expect(bus.sent.filter((m) => m.from === 'b' && m.subject === 't.want').length).toBeGreaterThan(0)
  })

  test('a lost delta is seen as a gap in the numbers: the receiver asks for a full state, which repairs it', async () => {
    const bus = createBus()
    const a = start(bus, 'a')
    const b = start(bus, 'b')
    a.set('x', 1)
    await until('b holds x', () => b.of('a').x === 1)
    // The next delta is lost: the one after it shows the gap.
    let lost = 0
    bus.losing((from, _subject, data) => from === 'a' && data.includes('"type":"delta"') && lost++ === 0)
    a.set('y', 2)
    a.mesh.flush()
    a.set('z', 3)
    a.mesh.flush()
    await until('b repaired', () => b.of('a').y === 2 && b.of('a').z === 3)
    expect(b.events).toContain('delta a false')
    expect(bus.sent.filter((m) => m.from === 'b' && m.subject === 't.want' && m.data === 'a').length).toBeGreaterThan(0)
    // The repair is a full state: never the later delta applied over the gap.
    expect(b.events.at(-1)).toStartWith('replace a')
  })

  test('a lost last delta is seen from the heartbeat’s number', async () => {
    const bus = createBus()
    const a = start(bus, 'a')
    const b = start(bus, 'b')
    await until('b knows a', () => b.events.includes('replace a 1'))
    bus.losing((from, _subject, data) => from === 'a' && data.includes('"type":"delta"'))
    a.set('x', 1)
    a.mesh.flush()
    bus.losing(() => false)
    await until('b repaired', () => b.of('a').x === 1)
    expect(b.events.filter((e) => e.startsWith('delta'))).toEqual([])
  })

  test('a node silent for the TTL is dropped; a node saying goodbye is dropped at once, or after its grace', async () => {
    const bus = createBus()
    const a = start(bus, 'a')
    const b = start(bus, 'b')
    const c = start(bus, 'c', { byeGraceMs: 200 })
    a.set('x', 1)
    await until('b and c hold a', () => b.of('a').x === 1 && c.of('a').x === 1)
    // a goes silent (cut off from the others, its process still running).
    bus.losing((from) => from === 'a')
    await until('a dropped', () => b.drops.length > 0 && c.drops.some((d) => d.run.node === 'a'))
    expect(b.drops).toEqual([{ run: { node: 'a', inc: expect.any(String), current: true }, reason: 'ttl' }])
    expect(b.held.has('a')).toBe(false)
    expect(b.mesh.peers()).toEqual(['c'])

    await b.stop()
    // c keeps b for the grace, then drops it: 'bye'.
    expect(c.mesh.peers()).toEqual([])
    expect(c.mesh.ending()).toEqual([{ node: 'b', inc: expect.any(String), current: true }])
    await until('b dropped by c', () => c.drops.some((d) => d.run.node === 'b'))
    expect(c.drops.find((d) => d.run.node === 'b')!.reason).toBe('bye')
    await c.stop()
  })

  test('a new run of a node replaces its last run: dropped at once, or kept apart until its TTL', async () => {
    const bus = createBus()
    const b = start(bus, 'b')
    const c = start(bus, 'c', { keepLastRun: true })
    const a1 = start(bus, 'a', { inc: 'run1' })
    a1.set('x', 1)
    await until('b and c hold a', () => b.of('a').x === 1 && c.of('a').x === 1)
    // Run 1 dies without a goodbye (silent from now on); run 2 starts under the same id.
    bus.losing((_from, _subject, data) => data.includes('"inc":"run1"'))
    const a2 = start(bus, 'a', { inc: 'run2' })
    a2.set('y', 2)
    await until('b and c hold run 2', () => b.of('a').y === 2 && c.of('a').y === 2)
    expect(b.drops).toEqual([{ run: { node: 'a', inc: 'run1', current: true }, reason: 'incarnation' }])
    expect(b.of('a')).toEqual({ y: 2 })
    // c keeps run 1 apart, then drops it once silent for the TTL.
    expect(c.events).toContain('retire a false')
    expect(c.held.get('a/run1')).toEqual(new Map([['x', 1]]))
    expect(c.mesh.ending()).toEqual([{ node: 'a', inc: 'run1', current: false }])
    await until('run 1 dropped', () => c.drops.length > 0)
    expect(c.drops).toEqual([{ run: { node: 'a', inc: 'run1', current: false }, reason: 'ttl' }])
    expect(c.of('a')).toEqual({ y: 2 })
    expect(c.mesh.peers().sort()).toEqual(['a', 'b'])
  })

  test('cut off from NATS: `drop` forgets the others at once, `keep` keeps them and does not count the time cut off', async () => {
    const bus = createBus()
    const a = start(bus, 'a')
    const dropping = start(bus, 'd')
    const keeping = start(bus, 'k', { cutOff: 'keep' })
    a.set('x', 1)
    await until('both hold a', () => dropping.of('a').x === 1 && keeping.of('a').x === 1)
    // Both are cut off (nothing reaches them), for longer than the TTL.
    bus.losing((from) => from === 'a')
    dropping.conn.status('disconnect')
    keeping.conn.status('disconnect')
    await until('d drops a', () => dropping.drops.length > 0)
    expect(dropping.drops[0]!.reason).toBe('cut_off')
    await Bun.sleep(600)
    expect(keeping.drops).toEqual([])
    expect(keeping.of('a')).toEqual({ x: 1 })
    // Back: hello, and every node's full state again.
    bus.losing(() => false)
    dropping.conn.status('reconnect')
    keeping.conn.status('reconnect')
    await until('d holds a again', () => dropping.of('a').x === 1)
    expect(keeping.drops).toEqual([])
  })
})
