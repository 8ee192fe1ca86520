import type { NatsConnection } from '@nats-io/transport-node'
import type { Logger } from '../../../core/logger'
import { createSubscriptionWatch, type SubscriptionWatch } from '../../../core/nats-subscriptions'

/**
 * What nodes say to each other on a mesh's subject (core NATS). A feature's delta (`D`) and part
 * of a full state (`F`) are objects whose fields sit beside these: `{ type: 'delta', node, inc,
 * seq, ...delta }`.
 */
export type MeshMessage<D extends object, F extends object> = { node: string; inc: string } & (
  | { type: 'hello' }
  | { type: 'bye' }
  | { type: 'hb'; seq: number }
  | ({ type: 'delta'; seq: number } & D)
  | ({ type: 'full'; seq: number; part: number; parts: number } & F)
)

/** A run of another node (a restarted node is a new run); `current` false for a last run kept apart (see `retire`). */
export type MeshRun = { node: string; inc: string; current: boolean }

/**
 * Why a run's state goes: it said goodbye (after `byeGraceMs`), it went silent for `ttlMs`, a new
 * run of its node is heard (when last runs are not kept), or this node is cut off (`cutOff: 'drop'`).
 */
export type DropReason = 'bye' | 'ttl' | 'incarnation' | 'cut_off'

type Replica = { node: string; inc: string; seq: number; heardSeq: number; lastHeard: number; ready: boolean; asked: number; full?: { seq: number; parts: unknown[] }; leaving?: ReturnType<typeof setTimeout> }

export type NodeMeshOptions<D extends object, F extends object> = {
  nc: NatsConnection
  /** Where the messages go, and where a node asks another (by id) for its full state. */
  subject: string
  wantSubject: string
  /** The feature's name: the subscriptions' labels (`<name>`, `<name>_want`) and in log lines. */
  name: string
  /** This node's id, and an id for this run of it (a restarted node is a new incarnation). */
  node: string
  inc: string
  /** A node not heard from for this long is dropped (`ttl`). */
  ttlMs: number
  heartbeatMs?: number
  flushMs: number
  /** Whether the node may not serve without its subscriptions (see WatchOptions.essential). */
  essential?: boolean
  /**
   * While this node is cut off (its NATS connection down; or, with `drop`, its subscription
   * denied) it hears nobody. `keep`: the others are kept and the time cut off counts as no
   * silence (a node is lost only if not heard for the TTL from the reconnect on). `drop`: every
   * other node is dropped (`cut_off`) and messages ignored until this node hears again.
   */
  cutOff: 'keep' | 'drop'
  /** How long a node that said goodbye is kept (its messages cancel that); 0: dropped at once. */
  byeGraceMs?: number
  /** Also send this node's full state with its hello (start, reconnect, restored subscription). */
  fullWithHello?: boolean
  /** This node's changes since the last call, one numbered message each (see `pack`). */
  deltas: () => D[]
  /** This node's full state now, in parts (one message each; see `pack`). */
  full: () => F[]
  /** A delta of `node`'s current run. `inOrder`: the next number after a repaired state; else a gap or a repeat (the mesh asks for a full state on a gap). */
  delta: (node: string, delta: D, inOrder: boolean) => void
  /** `node`'s full state: replaces what was known of its current run. */
  replace: (node: string, parts: F[]) => void
  /** `run`'s state goes, for `reason`. */
  drop: (run: MeshRun, reason: DropReason) => void
  /**
   * Given, a node's last run superseded by a new run is kept: its state is to be filed apart from
   * the node's id, until the TTL after its last word (or the end of its grace if it had said
   * goodbye). Absent, it is dropped at once (`incarnation`).
   */
  retire?: (run: MeshRun, saidBye: boolean) => void
  logger: Logger
  /** The node's watched subscriptions; one of its own when absent. */
  subscriptions?: SubscriptionWatch
  now?: () => number
}

/** `items` in lists whose `size`s add up to at most `max` (an item larger than that alone), one message each. */
export function pack<T>(items: T[], size: (item: T) => number, max: number): T[][] {
  const out: T[][] = []
  let chunk: T[] = []
  let total = 0
  for (const item of items) {
    const n = size(item)
    if (total + n > max && chunk.length > 0) {
      out.push(chunk)
      chunk = []
      total = 0
    }
    chunk.push(item)
    total += n
  }
  if (chunk.length > 0) out.push(chunk)
  return out
}

/**
 * Shares each API node's state of a feature with the others over core NATS, without any central
 * store. Every `flushMs` a node sends what changed in its own state as numbered deltas, and every
 * `heartbeatMs` a heartbeat carrying its latest number: a receiver that sees a gap (or has no
 * state of the node yet) asks for the node's full state (at most once per heartbeat period)
 * instead of guessing, and the full state, sent in parts, replaces what it knew. A new node says
 * hello and every node answers with its full state; it says hello again after a reconnect or a
 * subscription restored, when messages in either direction may have been lost. A node not heard
 * from for `ttlMs` is dropped; one stopping says goodbye. The feature says what its state, deltas
 * and full states are, and what dropping a node means for it.
 */
export function startNodeMesh<D extends object, F extends object>(deps: NodeMeshOptions<D, F>) {
  type Message = MeshMessage<D, F>
  const now = deps.now ?? Date.now
  const log = deps.logger
  const heartbeatMs = deps.heartbeatMs ?? Math.min(1000, Math.floor(deps.ttlMs / 5))
  const graceMs = deps.byeGraceMs ?? 0
  const replicas = new Map<string, Replica>()
  /** Last runs superseded by a new run of their node and kept (see `retire`), by node and inc. */
  const retired = new Map<string, Replica>()
  let seq = 0
  let stopped = false
  /** False while this node's NATS connection is down (or, with cutOff `drop`, its subscription denied): it hears nobody. */
  let hearing = true

  const send = (m: Message) => {
    if (deps.nc.isClosed()) return
    try {
      deps.nc.publish(deps.subject, JSON.stringify(m))
    } catch (err) {
      log.debug({ err }, `${deps.name} message not sent`)
    }
  }
  const header = () => ({ node: deps.node, inc: deps.inc })

  const flush = () => {
    for (const d of deps.deltas()) send({ type: 'delta', ...header(), seq: ++seq, ...d })
  }
  const sendFull = () => {
    flush()
    const parts = deps.full()
    if (parts.length === 0) throw new Error('a full state has at least one part')
    parts.forEach((p, part) => send({ type: 'full', ...header(), seq, part, parts: parts.length, ...p }))
  }
  const hello = () => {
    if (stopped) return
    send({ type: 'hello', ...header() })
    if (deps.fullWithHello) sendFull()
  }

  const ask = (node: string, r: Replica) => {
    // One request per heartbeat period at most: an answer is on its way.
    if (now() - r.asked < heartbeatMs) return
    r.asked = now()
    try {
      deps.nc.publish(deps.wantSubject, node)
    } catch {
      // asked again at the next heartbeat
    }
  }

  const runKey = (r: Replica) => `${r.node}\u0000${r.inc}`
  const runOf = (r: Replica, current: boolean): MeshRun => ({ node: r.node, inc: r.inc, current })
  /** Drops `r`, the current run of its node or a retired one. */
  const drop = (r: Replica, reason: DropReason) => {
    const current = replicas.get(r.node) === r
    if (current) replicas.delete(r.node)
    else if (!retired.delete(runKey(r))) return
    deps.drop(runOf(r, current), reason)
  }
  const dropAll = (reason: DropReason) => {
    for (const r of [...replicas.values(), ...retired.values()]) drop(r, reason)
  }

  const replicaOf = (m: { node: string; inc: string }): Replica => {
    let r = replicas.get(m.node)
    if (!r || r.inc !== m.inc) {
      if (r && deps.retire) {
        // A new run of the node (restarted in place): its last run is filed apart until its grace
        // ends (it said goodbye) or it has been silent for the TTL.
        retired.set(runKey(r), r)
        deps.retire(runOf(r, false), r.leaving !== undefined)
      } else if (r) drop(r, 'incarnation')
      r = { node: m.node, inc: m.inc, seq: 0, heardSeq: 0, lastHeard: now(), ready: false, asked: 0 }
      replicas.set(m.node, r)
    }
    return r
  }

  const bye = (m: { node: string; inc: string }) => {
    if (graceMs <= 0) {
      const r = replicas.get(m.node)
      return r && drop(r, 'bye')
    }
    const r = replicaOf(m)
    r.lastHeard = now()
    if (r.leaving !== undefined) clearTimeout(r.leaving)
    // A new run of the node heard meanwhile (replicaOf) retires this one: only this run's state goes.
    r.leaving = setTimeout(() => !stopped && drop(r, 'bye'), graceMs)
  }

  const receive = (m: Message) => {
    if (m.node === deps.node) return
    if (m.type === 'hello') return sendFull()
    if (m.type === 'bye') return bye(m)
    const r = replicaOf(m)
    r.lastHeard = now()
    if (r.leaving !== undefined) {
      // Heard again after its goodbye: it is not leaving after all.
      clearTimeout(r.leaving)
      r.leaving = undefined
    }
    switch (m.type) {
      case 'hb':
        if (!r.ready || m.seq !== r.seq) ask(m.node, r)
        return
      case 'delta': {
        r.heardSeq = Math.max(r.heardSeq, m.seq)
        const inOrder = r.ready && m.seq === r.seq + 1
        if (inOrder) r.seq = m.seq
        deps.delta(m.node, m, inOrder)
        if (!inOrder && (!r.ready || m.seq > r.seq)) {
          r.ready = false
          ask(m.node, r)
        }
        return
      }
      case 'full': {
        if (!r.full || r.full.seq !== m.seq || m.part === 0) r.full = { seq: m.seq, parts: [] }
        r.full.parts[m.part] = m
        if (r.full.parts.filter(Boolean).length < m.parts) return
        const parts = r.full.parts as F[]
        r.full = undefined
        r.seq = m.seq
        r.ready = true
        deps.replace(m.node, parts)
        return
      }
      default: {
        const never: never = m
        log.warn({ message: never }, `unknown ${deps.name} message`)
      }
    }
  }

  const cutOff = () => {
    hearing = false
    if (deps.cutOff === 'drop') dropAll('cut_off')
  }
  const subscriptions = deps.subscriptions ?? createSubscriptionWatch({ nc: deps.nc, logger: deps.logger })
  const sub = subscriptions.subscribe(deps.subject, {
    name: deps.name,
    essential: deps.essential,
    onMessage: (msg) => {
      if (stopped || (deps.cutOff === 'drop' && !hearing)) return
      try {
        receive(msg.json<Message>())
      } catch (e) {
        log.warn({ err: e }, `unreadable ${deps.name} message`)
      }
    },
    // Denied, a node that drops the others when cut off does so; one that keeps them loses them
    // after the TTL, as it hears nobody.
    ...(deps.cutOff === 'drop' ? { onDenied: cutOff } : {}),
    // Messages missed while NATS denied the subscription: say hello again, as after a reconnect.
    onRestored: () => {
      hearing = true
      hello()
    },
  })
  const wants = subscriptions.subscribe(deps.wantSubject, {
    name: `${deps.name}_want`,
    essential: deps.essential,
    onMessage: (msg) => {
      if (!stopped && msg.string() === deps.node) sendFull()
    },
    onRestored: hello,
  })

  const flusher = setInterval(flush, deps.flushMs)
  const beats = setInterval(() => {
    flush()
    send({ type: 'hb', ...header(), seq })
    // Cut off, silence says nothing of the others.
    if (!hearing) return
    for (const r of [...replicas.values(), ...retired.values()]) {
      if (r.leaving !== undefined || now() - r.lastHeard <= deps.ttlMs) continue
      if (replicas.get(r.node) === r) log.warn({ node: r.node, silentMs: now() - r.lastHeard }, `${deps.name}: a node went silent; what it shared is dropped`)
      drop(r, 'ttl')
    }
  }, heartbeatMs)

  // After a reconnect some messages in either direction may be lost: say hello again, so every
  // node sends its full state, and the heartbeats show the others where they missed ours. The
  // time cut off counts as no silence.
  void (async () => {
    for await (const s of deps.nc.status()) {
      if (stopped) return
      if (s.type === 'disconnect') cutOff()
      if (s.type !== 'reconnect') continue
      hearing = true
      const at = now()
      for (const r of replicas.values()) r.lastHeard = Math.max(r.lastHeard, at)
      for (const r of retired.values()) r.lastHeard = Math.max(r.lastHeard, at)
      hello()
    }
  })().catch(() => {})

  hello()

  return {
    /** Sends what changed now instead of at the next interval; the number of the last delta sent. */
    flush: () => {
      flush()
      return seq
    },
    /** Nodes this one hears from (itself not included; not those that said goodbye). */
    peers: () => [...replicas].filter(([, r]) => r.leaving === undefined).map(([node]) => node),
    /** Runs that are over but whose state is kept: said goodbye (within the grace), or superseded by a new run. */
    ending: (): MeshRun[] => [...[...replicas.values()].filter((r) => r.leaving !== undefined).map((r) => runOf(r, true)), ...[...retired.values()].map((r) => runOf(r, false))],
    /** The number of the latest delta heard from `node` (0: none). */
    heard: (node: string) => replicas.get(node)?.heardSeq ?? 0,
    /** Sends what is pending, says goodbye and stops. */
    stop: async () => {
      if (stopped) return
      flush()
      send({ type: 'bye', ...header() })
      stopped = true
      clearInterval(flusher)
      clearInterval(beats)
      for (const r of [...replicas.values(), ...retired.values()]) if (r.leaving !== undefined) clearTimeout(r.leaving)
      sub.unsubscribe()
      wants.unsubscribe()
      await deps.nc.flush().catch(() => {})
    },
  }
}

export type NodeMesh = ReturnType<typeof startNodeMesh>
