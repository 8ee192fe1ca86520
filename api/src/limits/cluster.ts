import type { NatsConnection } from '@nats-io/transport-node'
import type { Logger } from '../../../core/logger'
import { createSubscriptionWatch, type SubscriptionWatch } from '../../../core/nats-subscriptions'
import type { SharedConnections } from './connections'
import type { SharedCharges } from './rates'

/** [key, n]: a count, or what was charged. */
type Entry = [string, number]

/**
 * What nodes say to each other on `<prefix>.presence.limits` (core NATS). `open` carries this
 * node's count of open sockets per key (absolute: a later one replaces an earlier one); `spent`
 * and `failed` what it charged per budget and the credential failures per address since its last
 * delta (added up by the receivers).
 */
type Message =
  | { type: 'hello'; node: string; inc: string }
  | { type: 'hb'; node: string; inc: string; seq: number }
  | { type: 'delta'; node: string; inc: string; seq: number; open?: Entry[]; spent?: Entry[]; failed?: Entry[] }
  | { type: 'full'; node: string; inc: string; seq: number; part: number; parts: number; open: Entry[] }
  | { type: 'bye'; node: string; inc: string }

/** What this node knows of another: its open sockets as it last reported them. */
type Replica = { inc: string; seq: number; heardSeq: number; lastHeard: number; ready: boolean; asked: number; open: Map<string, number>; full?: { seq: number; parts: Entry[][] } }

/**
 * Most entries in one message: keeps every message below NATS' 1 MB payload limit even when every
 * key is a user id of 128 characters each escaped in JSON (~800 bytes); typical entries are ~30.
 */
const MAX_ENTRIES = 1000

/**
 * Shares the per-principal limits between API nodes over core NATS, the way presence is shared
 * (startPresenceCluster: the same hello / numbered deltas / heartbeats / full state on a gap, the
 * same TTL for a node gone silent), on `<prefix>.presence.limits` so that it needs no NATS
 * permission beyond presence's. Every check stays local: each node counts what it admits, and
 * every `flushMs` tells the others what changed in one message: its open sockets per user and per
 * address (absolute counts), what it charged each user, key and anonymous address budget, and the
 * credential failures per address. A receiver adds the sockets to what it admits against and
 * debits its own budgets by the charges (creating them if absent), so each budget holds across
 * the nodes up to one interval's charges per node.
 *
 * A node not heard from for `ttlMs` is dropped: its sockets count no more (so users are not locked
 * out by a dead node). A node that stops says goodbye (dropped at once); one that comes back under
 * the same id as a new run replaces its last run. While this node's own NATS connection is down,
 * or its subscription denied, it forgets every other node's counts and enforces its own share
 * only: NATS being away never makes a node refuse anyone.
 */
export function startLimitsCluster(deps: {
  nc: NatsConnection
  prefix: string
  /** This node's id (stable over a restart in place), and an id for this run of it. */
  node: string
  inc: string
  connections: SharedConnections
  rates: SharedCharges
  authFailures: SharedCharges
  ttlMs: number
  heartbeatMs?: number
  flushMs?: number
  logger: Logger
  /** The node's watched subscriptions; one of its own when absent. */
  subscriptions?: SubscriptionWatch
  now?: () => number
}) {
  const now = deps.now ?? Date.now
  const subject = `${deps.prefix}.presence.limits`
  const wantSubject = `${deps.prefix}.presence.limits.want`
  const log = deps.logger.child({ component: 'limits-cluster' })
  const heartbeatMs = deps.heartbeatMs ?? Math.min(1000, Math.floor(deps.ttlMs / 5))
  const replicas = new Map<string, Replica>()
  let seq = 0
  let stopped = false
  /** False while this node's NATS connection is down or its subscription denied: it hears nobody. */
  let hearing = true

  const send = (m: Message) => {
    if (deps.nc.isClosed()) return
    try {
      deps.nc.publish(subject, JSON.stringify(m))
    } catch (err) {
      log.debug({ err }, 'limits message not sent')
    }
  }

  /** Sets what `r` reports for `key`; the admissions count the difference. */
  const setOpen = (r: Replica, key: string, count: number) => {
    const was = r.open.get(key) ?? 0
    if (count === was) return
    if (count > 0) r.open.set(key, count)
    else r.open.delete(key)
    deps.connections.addRemote(key, count - was)
  }
  const drop = (node: string) => {
    const r = replicas.get(node)
    if (!r) return
    replicas.delete(node)
    for (const [key, n] of r.open) deps.connections.addRemote(key, -n)
  }
  const dropAll = () => {
    for (const node of [...replicas.keys()]) drop(node)
  }

  /** `entries` split into lists of at most MAX_ENTRIES, one message each. */
  const chunks = (entries: Entry[]): Entry[][] => {
    const out: Entry[][] = []
    for (let i = 0; i < entries.length; i += MAX_ENTRIES) out.push(entries.slice(i, i + MAX_ENTRIES))
    return out
  }

  const flush = () => {
    const open = deps.connections.changed()
    const spent = deps.rates.drain()
    const failed = deps.authFailures.drain()
    if (open.length + spent.length + failed.length === 0) return
    if (open.length + spent.length + failed.length <= MAX_ENTRIES) {
      send({ type: 'delta', node: deps.node, inc: deps.inc, seq: ++seq, ...(open.length ? { open } : {}), ...(spent.length ? { spent } : {}), ...(failed.length ? { failed } : {}) })
      return
    }
    for (const part of chunks(open)) send({ type: 'delta', node: deps.node, inc: deps.inc, seq: ++seq, open: part })
    for (const part of chunks(spent)) send({ type: 'delta', node: deps.node, inc: deps.inc, seq: ++seq, spent: part })
    for (const part of chunks(failed)) send({ type: 'delta', node: deps.node, inc: deps.inc, seq: ++seq, failed: part })
  }

  const sendFull = () => {
    flush()
    const parts = chunks(deps.connections.state())
    if (parts.length === 0) parts.push([])
    parts.forEach((open, part) => send({ type: 'full', node: deps.node, inc: deps.inc, seq, part, parts: parts.length, open }))
  }

  const ask = (node: string, r: Replica) => {
    // One request per heartbeat period at most: an answer is on its way.
    if (now() - r.asked < heartbeatMs) return
    r.asked = now()
    try {
      deps.nc.publish(wantSubject, node)
    } catch {
      // asked again at the next heartbeat
    }
  }

  const replicaOf = (m: { node: string; inc: string }): Replica => {
    let r = replicas.get(m.node)
    if (!r || r.inc !== m.inc) {
      // A new run of a node (it restarted in place): its last run's sockets went with it.
      if (r) drop(m.node)
      r = { inc: m.inc, seq: 0, heardSeq: 0, lastHeard: now(), ready: false, asked: 0, open: new Map() }
      replicas.set(m.node, r)
    }
    return r
  }

  const receive = (m: Message) => {
    if (m.node === deps.node) return
    if (m.type === 'hello') {
      sendFull()
      return
    }
    if (m.type === 'bye') {
      // Its sockets are closed: they count no more.
      drop(m.node)
      return
    }
    const r = replicaOf(m)
    r.lastHeard = now()
    switch (m.type) {
      case 'hb':
        if (!r.ready || m.seq !== r.seq) ask(m.node, r)
        return
      case 'delta':
        r.heardSeq = Math.max(r.heardSeq, m.seq)
        // Charges add up whatever was missed before them; counts are absolute, and a gap in the
        // numbers means some were missed: the node's full state repairs them.
        for (const [id, n] of m.spent ?? []) deps.rates.debit(id, n)
        for (const [ip, n] of m.failed ?? []) deps.authFailures.debit(ip, n)
        for (const [key, n] of m.open ?? []) setOpen(r, key, n)
        if (r.ready && m.seq === r.seq + 1) r.seq = m.seq
        else if (!r.ready || m.seq > r.seq) {
          r.ready = false
          ask(m.node, r)
        }
        return
      case 'full': {
        if (!r.full || r.full.seq !== m.seq || m.part === 0) r.full = { seq: m.seq, parts: [] }
        r.full.parts[m.part] = m.open
        if (r.full.parts.filter(Boolean).length < m.parts) return
        const state = new Map<string, number>()
        for (const part of r.full.parts) for (const [key, n] of part) state.set(key, n)
        r.full = undefined
        for (const key of [...r.open.keys()]) if (!state.has(key)) setOpen(r, key, 0)
        for (const [key, n] of state) setOpen(r, key, n)
        r.seq = m.seq
        r.ready = true
        return
      }
      default: {
        const never: never = m
        log.warn({ message: never }, 'unknown limits message')
      }
    }
  }

  const hello = () => {
    if (stopped) return
    send({ type: 'hello', node: deps.node, inc: deps.inc })
    // What this node sent while it was cut off may be lost: the others get its whole state.
    sendFull()
  }
  const subscriptions = deps.subscriptions ?? createSubscriptionWatch({ nc: deps.nc, logger: deps.logger })
  // Not essential: denied, the node enforces its own share only (as with NATS away).
  const sub = subscriptions.subscribe(subject, {
    name: 'limits',
    essential: false,
    onMessage: (msg) => {
      if (stopped || !hearing) return
      try {
        receive(msg.json<Message>())
      } catch (e) {
        log.warn({ err: e }, 'unreadable limits message')
      }
    },
    onDenied: () => {
      hearing = false
      dropAll()
    },
    onRestored: () => {
      hearing = true
      hello()
    },
  })
  const wants = subscriptions.subscribe(wantSubject, {
    name: 'limits_want',
    essential: false,
    onMessage: (msg) => {
      if (!stopped && msg.string() === deps.node) sendFull()
    },
    onRestored: hello,
  })

  const flusher = setInterval(flush, deps.flushMs ?? 200)
  const beats = setInterval(() => {
    flush()
    send({ type: 'hb', node: deps.node, inc: deps.inc, seq })
    for (const [node, r] of replicas) {
      if (now() - r.lastHeard > deps.ttlMs) {
        log.warn({ node, silentMs: now() - r.lastHeard }, 'limits: a node went silent; its open sockets count no more')
        drop(node)
      }
    }
  }, heartbeatMs)

  // Cut off from NATS, the node hears nobody: the others' counts would only get staler (and could
  // refuse a user who left them meanwhile), so they are forgotten and the node counts its own
  // only. Back, it says hello: every node sends its full state, and it sends its own.
  void (async () => {
    for await (const s of deps.nc.status()) {
      if (stopped) return
      if (s.type === 'disconnect') {
        hearing = false
        dropAll()
      }
      if (s.type !== 'reconnect') continue
      hearing = true
      hello()
    }
  })().catch(() => {})

  hello()

  return {
    /** This node's id. */
    node: deps.node,
    /** Nodes this one hears from (itself not included), for tests. */
    peers: () => [...replicas.keys()],
    /** Sends what changed now instead of at the next interval, and returns the number of the last delta sent (for tests). */
    flush: () => {
      flush()
      return seq
    },
    /** The number of the latest delta heard from `node` (0: none), for tests. */
    heard: (node: string) => replicas.get(node)?.heardSeq ?? 0,
    /** Sends what is pending, says goodbye (the others forget this node's sockets) and stops. */
    stop() {
      if (stopped) return
      flush()
      send({ type: 'bye', node: deps.node, inc: deps.inc })
      stopped = true
      clearInterval(flusher)
      clearInterval(beats)
      sub.unsubscribe()
      wants.unsubscribe()
    },
  }
}

export type LimitsCluster = ReturnType<typeof startLimitsCluster>
