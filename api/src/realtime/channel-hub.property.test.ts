import { describe, expect, test } from 'bun:test'
import fc from 'fast-check'
import type { ChangeNotice } from '../../../core/channels'
import { createChannelHub, type ResumePoint, type Sink, type Snapshot, type Timers } from './channel-hub'

/**
 * A model-based property test of the channel hub: random interleavings of subscribes,
 * unsubscribes, resumes (real and bogus resume points), commits, change runs published in any
 * order and more than once, a change feed that delivers them in stream order (and sometimes loses
 * some and re-syncs), snapshot and history reads that return at any time with any state they may
 * legally see, gap timeouts and rebuilds (epoch changes). Checked against the promise: every
 * frame a subscriber gets, applied in order, equals the channel's history at that version, or a
 * `resync` snapshot marks the break (and is never older than what the subscriber already had in
 * that epoch); and once everything settles, every subscriber holds the channel as it is.
 *
 * `npm test` runs a short fixed-seed slice; `npm run fuzz:hub` runs many more
 * (FANFARE_FUZZ_RUNS, FANFARE_FUZZ_SEED).
 */

const CHANNEL = 'leaderboard:model'
const CLIENTS = 3

type SnapshotData = { items: string[] }

/** The world outside the hub: the database (epochs and versions), the outbox, the change stream. */
class World {
  /** Each epoch's history: the data of version v is items[v - 1]. */
  epochs = new Map<string, string[]>([['e0', []]])
  epoch = 'e0'
  /** Every (epoch, version) the channel has been at, in order: what a read may see. */
  timeline: { epoch: string; version: number }[] = [{ epoch: 'e0', version: 0 }]
  /** Committed changes not yet published (a crash may delay any of them). */
  outbox: ChangeNotice[] = []
  /** The change stream: published runs in publish order, copies included. */
  stream: ChangeNotice[] = []
  /** How much of the stream the node's change feed has delivered. */
  fed = 0
  private epochs_made = 0

  /** Broken promises seen, first first. */
  violations: Error[] = []
  violation(message: string): Error {
    const err = new Error(message)
    this.violations.push(err)
    return err
  }

  get version() {
    return this.epochs.get(this.epoch)!.length
  }
  commit() {
    const items = this.epochs.get(this.epoch)!
    const version = items.length + 1
    const data = `${this.epoch}:${version}`
    items.push(data)
    this.timeline.push({ epoch: this.epoch, version })
    this.outbox.push({ channel: CHANNEL, version, epoch: this.epoch, data: { player: data, score: version, previous: null }, at: '' })
  }
  /** A rebuild: a new epoch whose history has `length` versions. */
  rebuild(length: number) {
    const epoch = `e${++this.epochs_made}`
    this.epochs.set(epoch, Array.from({ length }, (_, i) => `${epoch}:${i + 1}`))
    this.epoch = epoch
    this.timeline.push({ epoch, version: length })
  }
  snapshotAt(i: number): Snapshot {
    const { epoch, version } = this.timeline[i]
    return { epoch: version === 0 ? '' : epoch, version, data: { items: this.epochs.get(epoch)!.slice(0, version) } satisfies SnapshotData }
  }
}

/** Fake timers: `tick` runs every timer that is due (all of them: time is abstract here). */
function fakeTimers() {
  let next = 0
  const pending = new Map<number, () => void>()
  const timers: Timers = {
    set: (fn) => {
      const id = ++next
      pending.set(id, fn)
      return id
    },
    clear: (id) => void pending.delete(id as number),
  }
  return {
    timers,
    size: () => pending.size,
    tick: () => {
      const due = [...pending.values()]
      pending.clear()
      for (const fn of due) fn()
    },
  }
}

type Held = { epoch: string; version: number; items: string[] }

/** One client: its current connection, what it derived from its frames, and the checks. */
class Client {
  conn = 0
  sink: (Sink & { closed: boolean }) | undefined
  held: Held | undefined
  onTopic = false
  from: ResumePoint | undefined
  fromReal = false
  frames = 0
  failed = false
  constructor(
    readonly index: number,
    readonly world: World,
    readonly log: string[],
  ) {}

  open(topics: Map<string, Set<Client>>, from?: ResumePoint) {
    this.conn++
    const id = `c${this.index}.${this.conn}`
    this.frames = 0
    this.from = from
    // Whether the resume point existed when the client resumed (a bogus one may come true later).
    this.fromReal = from !== undefined && this.world.epochs.get(from.epoch === '' ? 'e0' : from.epoch)?.length! >= from.since
    this.onTopic = false
    this.failed = false
    const sink = {
      id,
      closed: false,
      send: (text: string) => {
        if (!sink.closed) this.receive(JSON.parse(text))
        return text.length
      },
      subscribe: (topic: string) => {
        if (sink.closed) return
        this.onTopic = true
        ;(topics.get(topic) ?? topics.set(topic, new Set()).get(topic)!).add(this)
      },
      unsubscribe: (topic: string) => {
        this.onTopic = false
        topics.get(topic)?.delete(this)
      },
      overflow: () => {
        throw new Error('overflow is never expected here')
      },
    }
    this.sink = sink
    return sink
  }

  close(topics: Map<string, Set<Client>>) {
    if (this.sink) this.sink.closed = true
    topics.get(CHANNEL)?.delete(this)
    this.onTopic = false
    this.sink = undefined
  }

  fail(message: string): never {
    // Also kept aside: the hub may catch what a send throws.
    throw this.world.violation(`client ${this.index} (connection ${this.conn}): ${message}\n  recent steps: ${this.log.slice(-25).join(' | ')}`)
  }

  /** Checks one frame against the promise, then applies it. */
  receive(f: any) {
    this.log.push(`c${this.index}<-${f.op}:${f.epoch}/${f.version}${f.resync ? ':resync' : ''}`)
    if (process.env.DEBUG_HUB) console.log(`c${this.index}.${this.conn} frames=${this.frames} held=${JSON.stringify(this.held)} <- ${JSON.stringify(f)}`)
    const first = this.frames++ === 0
    const items = (epoch: string, version: number) => this.world.epochs.get(epoch === '' ? 'e0' : epoch)?.slice(0, version)
    switch (f.op) {
      case 'subscribed': {
        if (!first || !this.from) this.fail('`subscribed` other than as the first frame of a resume')
        if (f.version !== this.from.since) this.fail(`resumed at ${f.version}, asked ${this.from.since}`)
        if (this.from.since !== 0 && f.epoch !== this.from.epoch) this.fail(`resumed in epoch ${f.epoch}, asked ${this.from.epoch}`)
        const have = items(f.epoch, f.version)
        if (!have || have.length !== f.version) this.fail(`resumed at ${f.epoch}/${f.version}, which never existed`)
        this.held = { epoch: f.epoch, version: f.version, items: have }
        return
      }
      case 'snapshot': {
        if (first && Boolean(f.resync) !== Boolean(this.from)) this.fail(`first snapshot resync=${f.resync} for a ${this.from ? 'refused resume' : 'plain subscribe'}`)
        if (!first && !f.resync) this.fail('a later snapshot not marked resync')
        const expected = items(f.epoch, f.version)
        if (!expected || JSON.stringify(expected) !== JSON.stringify((f.data as SnapshotData).items)) this.fail(`snapshot ${f.epoch}/${f.version} does not hold that version`)
        const mine = first ? (this.from?.since !== 0 ? this.from : undefined) : this.held && { since: this.held.version, epoch: this.held.epoch }
        // Never older than what the client had in that epoch (a real resume point included).
        const real = first && this.from ? this.fromReal : true
        if (mine && real && mine.epoch === f.epoch && f.version < mine.since) this.fail(`resync snapshot ${f.version} is older than ${mine.since} already held`)
        this.held = { epoch: f.epoch, version: f.version, items: [...expected] }
        return
      }
      case 'update': {
        if (first || !this.held) this.fail('an update before the first frame')
        const h = this.held
        if (f.epoch !== h.epoch && h.version !== 0) this.fail(`update of epoch ${f.epoch} while in ${h.epoch}`)
        // A windowed channel's frame carries versions from..version, merged.
        const from = f.from ?? f.version
        if (from !== h.version + 1 || f.version < from) this.fail(`update ${from}..${f.version} after ${h.version}: a gap or a repeat`)
        const data = this.world.epochs.get(f.epoch)?.slice(from - 1, f.version)
        if (data === undefined || data.length !== f.version - from + 1 || f.data.player !== data.join('|')) {
          this.fail(`update ${f.epoch}/${from}..${f.version} carries ${f.data.player}, the history has ${data?.join('|')}`)
        }
        this.held = { epoch: f.epoch, version: f.version, items: [...h.items, ...data] }
        return
      }
      default:
        this.fail(`unexpected frame ${JSON.stringify(f)}`)
    }
  }
}

type Op =
  | { t: 'subscribe'; c: number }
  | { t: 'resume'; c: number; point: 'own' | 'real' | 'bogus'; pick: number }
  | { t: 'unsubscribe'; c: number }
  | { t: 'commit'; n: number }
  | { t: 'publish'; pick: number; copy: boolean }
  | { t: 'deliver'; n: number }
  | { t: 'read'; pick: number; lag: number }
  | { t: 'history'; pick: number; extra: number }
  | { t: 'rebuild'; length: number }
  | { t: 'lose'; n: number }
  | { t: 'tick' }

const client = fc.integer({ min: 0, max: CLIENTS - 1 })
const pick = fc.nat(1000)
const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ t: fc.constant('subscribe' as const), c: client }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('resume' as const), c: client, point: fc.constantFrom('own' as const, 'own' as const, 'real' as const, 'bogus' as const), pick }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('unsubscribe' as const), c: client }) },
  { weight: 6, arbitrary: fc.record({ t: fc.constant('commit' as const), n: fc.integer({ min: 1, max: 3 }) }) },
  { weight: 6, arbitrary: fc.record({ t: fc.constant('publish' as const), pick, copy: fc.boolean() }) },
  { weight: 6, arbitrary: fc.record({ t: fc.constant('deliver' as const), n: fc.integer({ min: 1, max: 4 }) }) },
  { weight: 5, arbitrary: fc.record({ t: fc.constant('read' as const), pick, lag: fc.nat(3) }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('history' as const), pick, extra: fc.nat(3) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('rebuild' as const), length: fc.nat(6) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('lose' as const), n: fc.integer({ min: 1, max: 3 }) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('tick' as const) }) },
)

/** Lets the hub run everything it can: promise continuations and the turns it waits for. */
async function flush() {
  for (let i = 0; i < 4; i++) await new Promise((r) => setImmediate(r))
}

async function runScenario(ops: Op[], historyKept: number, windowed = false) {
  const world = new World()
  const log: string[] = []
  const timers = fakeTimers()
  const topics = new Map<string, Set<Client>>()
  const reads: { start: number; resolve: (s: Snapshot) => void }[] = []
  const historyReads: { at: number; after: number; resolve: (n: ChangeNotice[]) => void }[] = []
  const hub = createChannelHub({
    snapshot: () => new Promise((resolve) => reads.push({ start: world.timeline.length - 1, resolve })),
    history: (_channel, after) => new Promise((resolve) => historyReads.push({ at: world.stream.length, after, resolve })),
    publish: (topic, text) => {
      for (const c of [...(topics.get(topic) ?? [])]) c.sink?.send(text)
    },
    gapTimeoutMs: 1,
    maxReplay: 8,
    timers: timers.timers,
    // A windowed channel folds a window's updates into one frame (the model's data concatenates).
    windowOf: windowed ? () => ({ ms: 1, merge: (a, b) => ({ ...(b as object), player: `${(a as { player: string }).player}|${(b as { player: string }).player}` }) }) : undefined,
  })
  const clients = Array.from({ length: CLIENTS }, (_, i) => new Client(i, world, log))
  const subscribe = (c: Client, from?: ResumePoint) => {
    const sink = c.open(topics, from)
    hub.subscribe(sink, CHANNEL, from).catch(() => {
      // Told plainly: the real socket gets an error frame for its subscribe.
      if (c.sink === sink) (c.failed = true), c.close(topics)
    })
  }
  const resolveRead = (i: number, lag: number) => {
    const [r] = reads.splice(i, 1)
    // Any state from the read's start to now: a read sees one consistent moment in between.
    r.resolve(world.snapshotAt(Math.min(world.timeline.length - 1, r.start + lag)))
  }
  const resolveHistory = (i: number, extra: number) => {
    const [r] = historyReads.splice(i, 1)
    const upTo = Math.min(world.stream.length, r.at + extra)
    // Retention: only the last `historyKept` runs of the channel are kept.
    const kept = world.stream.slice(0, upTo).slice(-historyKept)
    r.resolve(kept.filter((n) => n.version > r.after))
  }

  const apply = async (o: Op) => {
    log.push(JSON.stringify(o))
    switch (o.t) {
      case 'subscribe': {
        const c = clients[o.c]
        if (!c.sink) subscribe(c)
        break
      }
      case 'resume': {
        const c = clients[o.c]
        let from: ResumePoint
        if (o.point === 'own' && c.held) from = { since: c.held.version, epoch: c.held.epoch }
        else if (o.point === 'bogus') from = { since: o.pick % 20, epoch: o.pick % 3 === 0 ? 'nope' : world.epoch }
        else {
          const s = world.timeline[o.pick % world.timeline.length]
          from = { since: s.version, epoch: s.version === 0 ? '' : s.epoch }
        }
        if (c.sink) {
          const old = c.sink
          c.close(topics)
          hub.removeSink(old, [CHANNEL])
        }
        subscribe(c, from)
        break
      }
      case 'unsubscribe': {
        const c = clients[o.c]
        if (c.sink) {
          const old = c.sink
          hub.unsubscribe(old, CHANNEL)
          c.close(topics)
        }
        break
      }
      case 'commit':
        for (let i = 0; i < o.n; i++) world.commit()
        break
      case 'publish': {
        if (world.outbox.length === 0) break
        const i = o.pick % world.outbox.length
        world.stream.push(world.outbox[i])
        if (!o.copy) world.outbox.splice(i, 1)
        break
      }
      case 'deliver':
        for (let i = 0; i < o.n && world.fed < world.stream.length; i++) hub.onNotice(world.stream[world.fed++])
        break
      case 'read':
        if (reads.length > 0) resolveRead(o.pick % reads.length, o.lag)
        break
      case 'history':
        if (historyReads.length > 0) resolveHistory(o.pick % historyReads.length, o.extra)
        break
      case 'rebuild':
        world.rebuild(o.length)
        break
      case 'lose':
        // The feed lost runs (its stream was recreated, or purged while it was away) and knows it.
        world.fed = Math.min(world.stream.length, world.fed + o.n)
        void hub.resyncAll()
        break
      case 'tick':
        timers.tick()
        break
    }
    await flush()
    if (process.env.DEBUG_HUB) console.log(JSON.stringify(o), '=> hub', JSON.stringify(hub.stats()), 'world', world.epoch, world.version, 'reads', reads.map((r) => JSON.stringify(world.timeline[r.start])).join(','))
    if (world.violations.length > 0) throw world.violations[0]
  }

  for (const o of ops) await apply(o)

  // Settle: every change published and delivered, every read answered with the present, every
  // timer run; then one more change (so a rebuilt epoch reaches the node) and settle again.
  const settle = async () => {
    for (let round = 0; round < 200; round++) {
      while (world.outbox.length > 0) world.stream.push(world.outbox.shift()!)
      while (world.fed < world.stream.length) hub.onNotice(world.stream[world.fed++])
      while (reads.length > 0) resolveRead(0, Number.MAX_SAFE_INTEGER)
      while (historyReads.length > 0) resolveHistory(0, Number.MAX_SAFE_INTEGER)
      timers.tick()
      await flush()
      if (world.violations.length > 0) throw world.violations[0]
      if (reads.length === 0 && historyReads.length === 0 && timers.size() === 0 && world.fed === world.stream.length) return
      if (process.env.DEBUG_HUB && round > 190) console.log(round, reads.length, historyReads.length, timers.size(), JSON.stringify(hub.stats()), world.epoch, world.version)
    }
    throw new Error(`the hub did not settle\n  recent steps: ${log.slice(-25).join(' | ')}`)
  }
  await settle()
  log.push('final commit')
  world.commit()
  await settle()

  if (process.env.DEBUG_HUB) console.log('ops', ops.length, 'frames', log.filter((l) => l.startsWith('c')).length, 'subscribed at end', clients.filter((c) => c.sink).length, 'version', world.version)
  for (const c of clients) {
    if (!c.sink) continue
    const where = `client ${c.index}: holds ${c.held?.epoch}/${c.held?.version}, the channel is at ${world.epoch}/${world.version}\n  recent steps: ${log.slice(-30).join(' | ')}`
    if (!c.held || c.held.epoch !== world.epoch || c.held.version !== world.version) throw new Error(where)
    if (!c.onTopic) throw new Error(`client ${c.index} never joined the live topic`)
    expect(c.held.items).toEqual(world.epochs.get(world.epoch)!)
  }
  hub.stop()
}

const runs = Number(process.env.FANFARE_FUZZ_RUNS ?? 300)
const seed = Number(process.env.FANFARE_FUZZ_SEED ?? 20261128)

describe('channel hub (model-based)', () => {
  // A failing case printed by fast-check, replayed alone: FANFARE_FUZZ_REPLAY='[[ops...], kept]'.
  if (process.env.FANFARE_FUZZ_REPLAY) {
    test('replay', async () => {
      const [ops, kept, windowed] = JSON.parse(process.env.FANFARE_FUZZ_REPLAY!) as [Op[], number, boolean?]
      await runScenario(ops, kept, windowed)
    })
    return
  }

  test(
    'every frame continues the channel history or is a marked resync; every subscriber ends in sync',
    async () => {
      await fc.assert(
        fc.asyncProperty(fc.array(op, { minLength: 5, maxLength: 120, size: 'max' }), fc.integer({ min: 1, max: 12 }), fc.boolean(), (ops, kept, windowed) =>
          runScenario(ops, kept, windowed),
        ),
        { numRuns: runs, seed, endOnFailure: process.env.FANFARE_FUZZ_SHRINK ? false : true },
      )
    },
    600_000,
  )
})
