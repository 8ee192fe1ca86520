import type { NatsConnection } from '@nats-io/transport-node'
import type { Logger } from '../../../core/logger'
import type { SubscriptionWatch } from '../../../core/nats-subscriptions'
import { pack, startNodeMesh } from '../cluster/node-mesh'
import type { SharedConnections } from './connections'
import type { SharedCharges } from './rates'

/** [key, n]: a count, what was charged, or the ms a hold-off has left. */
type Entry = [string, number]

/**
 * What a node's limits messages on `<prefix>.presence.limits` carry beside the mesh's fields (see
 * MeshMessage). `open` carries this node's count of open sockets per key (absolute: a later one
 * replaces an earlier one); `spent`, `failed` and `connects` what it charged per budget, the
 * credential failures and the connects per address since its last delta (added up by the
 * receivers); `held` the hold-offs it set since then, with the ms each has left (the time left,
 * not an end: clocks differ; a receiver keeps the later end).
 */
type Delta = { open?: Entry[]; spent?: Entry[]; failed?: Entry[]; connects?: Entry[]; held?: Entry[] }
/**
 * A full state: the open sockets, and every hold-off in force on the node (a node that joins
 * learns them). `open` is never absent, even in a part of hold-offs only: a node of the last
 * version reads it in every part.
 */
type Full = { open: Entry[]; held?: Entry[] }

/**
 * Most entries in one message: keeps every message below NATS' 1 MB payload limit even when every
 * key is a user id of 128 characters each escaped in JSON (~800 bytes); typical entries are ~30.
 */
const MAX_ENTRIES = 1000

/**
 * Shares the per-principal limits between API nodes over core NATS, through the same node mesh as
 * presence (startNodeMesh: hello, numbered deltas, heartbeats, full state on a gap, the TTL of a
 * node gone silent), on `<prefix>.presence.limits` so that it needs no NATS
 * permission beyond presence's. Every check stays local: each node counts what it admits, and
 * every `flushMs` tells the others what changed in one message: its open sockets per user and per
 * address (absolute counts), what it charged each user, key and anonymous address budget, the
 * credential failures and the connects per address, and the hold-offs it set after abuse closes
 * (sent at once, not at the next interval: see `holdOffSoon`). A receiver adds the sockets to what
 * it admits against, debits its own budgets by the charges (creating them if absent), so each
 * budget holds across the nodes up to one interval's charges per node, and holds the principal
 * (or address) off as long as the node that closed it does.
 *
 * A node not heard from for `ttlMs` is dropped: its sockets count no more (so users are not locked
 * out by a dead node); its hold-offs stay until they end. A node that stops says goodbye (dropped
 * at once); one that comes back under the same id as a new run replaces its last run. While this
 * node's own NATS connection is down, or its subscription denied, it forgets every other node's
 * counts and enforces its own share only, and its own hold-offs with those heard before (they end
 * by themselves): NATS being away never makes a node refuse anyone.
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
  /** What each other node reports of its open sockets per key. */
  const open = new Map<string, Map<string, number>>()

  /** Sets what `node` reports for `key`; the admissions count the difference. */
  const setOpen = (node: string, key: string, count: number) => {
    let of = open.get(node)
    if (!of) open.set(node, (of = new Map()))
    const was = of.get(key) ?? 0
    if (count === was) return
    if (count > 0) of.set(key, count)
    else of.delete(key)
    deps.connections.addRemote(key, count - was)
  }
  const chunks = (entries: Entry[]) => pack(entries, () => 1, MAX_ENTRIES)
  /** `fields` in one message when their entries fit, else each field's entries split over messages of their own. */
  const packFields = <T extends object>(fields: [keyof T & string, Entry[]][]): T[] => {
    const some = fields.filter(([, entries]) => entries.length > 0)
    const total = some.reduce((n, [, entries]) => n + entries.length, 0)
    if (total === 0) return []
    if (total <= MAX_ENTRIES) return [Object.fromEntries(some) as T]
    return some.flatMap(([name, entries]) => chunks(entries).map((part) => ({ [name]: part }) as T))
  }

  const mesh = startNodeMesh<Delta, Full>({
    nc: deps.nc, node: deps.node, inc: deps.inc, ttlMs: deps.ttlMs, heartbeatMs: deps.heartbeatMs, subscriptions: deps.subscriptions, now: deps.now,
    subject: `${deps.prefix}.presence.limits`,
    wantSubject: `${deps.prefix}.presence.limits.want`,
    name: 'limits',
    flushMs: deps.flushMs ?? 200,
    // Not essential: denied, the node enforces its own share only (as with NATS away).
    essential: false,
    // Cut off from NATS, the node hears nobody: the others' counts would only get staler (and
    // could refuse a user who left them meanwhile), so they are forgotten and the node counts its
    // own only. Back, it says hello: every node sends its full state, and it sends its own (what
    // it sent while cut off may be lost).
    cutOff: 'drop',
    fullWithHello: true,
    deltas: () =>
      packFields<Delta>([
        ['open', deps.connections.changed()],
        ['spent', deps.rates.drain()],
        ['failed', deps.authFailures.drain()],
        ['connects', deps.connections.connects.drain()],
        ['held', deps.connections.heldOff()],
      ]),
    full: () => {
      // Parts of hold-offs carry an empty `open` (see Full).
      const parts = packFields<Full>([['open', deps.connections.state()], ['held', deps.connections.holds()]]).map((part) => ({ ...part, open: part.open ?? [] }))
      return parts.length > 0 ? parts : [{ open: [] }]
    },
    // Charges add up whatever was missed before them, and a hold-off keeps the later end, so both
    // apply whatever the order; counts are absolute, and a gap in the numbers means some were
    // missed: the node's full state repairs them.
    delta: (node, m) => {
      for (const [id, n] of m.spent ?? []) deps.rates.debit(id, n)
      for (const [ip, n] of m.failed ?? []) deps.authFailures.debit(ip, n)
      for (const [key, n] of m.connects ?? []) deps.connections.connects.debit(key, n)
      for (const [key, ms] of m.held ?? []) deps.connections.holdOff(key, ms)
      for (const [key, n] of m.open ?? []) setOpen(node, key, n)
    },
    replace: (node, parts) => {
      const state = new Map<string, number>()
      for (const part of parts) for (const [key, n] of part.open) state.set(key, n)
      for (const part of parts) for (const [key, ms] of part.held ?? []) deps.connections.holdOff(key, ms)
      for (const key of [...(open.get(node)?.keys() ?? [])]) if (!state.has(key)) setOpen(node, key, 0)
      for (const [key, n] of state) setOpen(node, key, n)
    },
    // Whatever the reason (a goodbye: its sockets are closed; silence; a new run; this node cut
    // off), its sockets count no more. Its hold-offs stay, as its charges do: they were for what a
    // client did, and they end by themselves.
    drop: ({ node }) => {
      for (const [key, n] of open.get(node) ?? []) deps.connections.addRemote(key, -n)
      open.delete(node)
    },
    logger: deps.logger.child({ component: 'limits-cluster' }),
  })

  let stopped = false
  let soon = false
  return {
    /** This node's id. */
    node: deps.node,
    /**
     * Sends a hold-off just set at the end of this turn, before the 4029 close that follows it (the
     * close waits at least a turn): a client closed for abuse reconnects to another node at once,
     * well within the interval. Hold-offs set in one turn go in one message.
     */
    holdOffSoon: () => {
      if (soon || stopped) return
      soon = true
      setImmediate(() => {
        soon = false
        if (!stopped) mesh.flush()
      })
    },
    /** Nodes this one hears from (itself not included), for tests. */
    peers: mesh.peers,
    /** Sends what changed now instead of at the next interval, and returns the number of the last delta sent (for tests). */
    flush: mesh.flush,
    /** The number of the latest delta heard from `node` (0: none), for tests. */
    heard: mesh.heard,
    /** Sends what is pending, says goodbye (the others forget this node's sockets) and stops. */
    stop: () => {
      stopped = true
      return mesh.stop()
    },
  }
}

export type LimitsCluster = ReturnType<typeof startLimitsCluster>
