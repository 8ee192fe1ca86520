import type { NatsConnection } from '@nats-io/transport-node'
import type { Logger } from '../../../core/logger'
import type { SubscriptionWatch } from '../../../core/nats-subscriptions'
import { pack, startNodeMesh } from '../cluster/node-mesh'
import type { SharedConnections } from './connections'
import type { SharedCharges } from './rates'

/** [key, n]: a count, or what was charged. */
type Entry = [string, number]

/**
 * What a node's limits messages on `<prefix>.presence.limits` carry beside the mesh's fields (see
 * MeshMessage). `open` carries this node's count of open sockets per key (absolute: a later one
 * replaces an earlier one); `spent` and `failed` what it charged per budget and the credential
 * failures per address since its last delta (added up by the receivers).
 */
type Delta = { open?: Entry[]; spent?: Entry[]; failed?: Entry[] }
type Full = { open: Entry[] }

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
    deltas: () => {
      const open = deps.connections.changed()
      const spent = deps.rates.drain()
      const failed = deps.authFailures.drain()
      if (open.length + spent.length + failed.length === 0) return []
      if (open.length + spent.length + failed.length <= MAX_ENTRIES) return [{ ...(open.length ? { open } : {}), ...(spent.length ? { spent } : {}), ...(failed.length ? { failed } : {}) }]
      return [...chunks(open).map((open) => ({ open })), ...chunks(spent).map((spent) => ({ spent })), ...chunks(failed).map((failed) => ({ failed }))]
    },
    full: () => {
      const parts = chunks(deps.connections.state()).map((open) => ({ open }))
      return parts.length > 0 ? parts : [{ open: [] }]
    },
    // Charges add up whatever was missed before them; counts are absolute, and a gap in the
    // numbers means some were missed: the node's full state repairs them.
    delta: (node, m) => {
      for (const [id, n] of m.spent ?? []) deps.rates.debit(id, n)
      for (const [ip, n] of m.failed ?? []) deps.authFailures.debit(ip, n)
      for (const [key, n] of m.open ?? []) setOpen(node, key, n)
    },
    replace: (node, parts) => {
      const state = new Map<string, number>()
      for (const part of parts) for (const [key, n] of part.open) state.set(key, n)
      for (const key of [...(open.get(node)?.keys() ?? [])]) if (!state.has(key)) setOpen(node, key, 0)
      for (const [key, n] of state) setOpen(node, key, n)
    },
    // Whatever the reason (a goodbye: its sockets are closed; silence; a new run; this node cut
    // off), its sockets count no more.
    drop: ({ node }) => {
      for (const [key, n] of open.get(node) ?? []) deps.connections.addRemote(key, -n)
      open.delete(node)
    },
    logger: deps.logger.child({ component: 'limits-cluster' }),
  })

  return {
    /** This node's id. */
    node: deps.node,
    /** Nodes this one hears from (itself not included), for tests. */
    peers: mesh.peers,
    /** Sends what changed now instead of at the next interval, and returns the number of the last delta sent (for tests). */
    flush: mesh.flush,
    /** The number of the latest delta heard from `node` (0: none), for tests. */
    heard: mesh.heard,
    /** Sends what is pending, says goodbye (the others forget this node's sockets) and stops. */
    stop: mesh.stop,
  }
}

export type LimitsCluster = ReturnType<typeof startLimitsCluster>
