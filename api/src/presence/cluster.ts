import type { NatsConnection } from '@nats-io/transport-node'
import type { Logger } from '../../../core/logger'
import type { SubscriptionWatch } from '../../../core/nats-subscriptions'
import { putNewest } from '../../../core/newest'
import { pack, startNodeMesh, type MeshRun } from '../cluster/node-mesh'
import { goneKey, type ChannelDelta, type LeaveReason, type NodePart, type PresenceView } from './view'

/** What a node's presence messages on `<prefix>.presence.node` carry beside the mesh's fields (see MeshMessage). */
type Delta = { deltas: ChannelDelta[] }
type Full = { channels: [string, number, [string, string | undefined][]][]; gone?: Gone[] }

/** Most user entries in one message: keeps every message far below NATS' 1 MB payload limit. */
const MAX_ENTRIES = 2000

/** A user who left a channel of this node, and why: [channel, user, reason]. */
type Gone = [string, string, LeaveReason]

/**
 * How many of its latest departures a node remembers with their reasons, for the full states it
 * sends (one message's worth): a node repairing its replica from one tells each leave it missed
 * with its real reason, or `unknown` for one older than that.
 */
export const MAX_GONE = MAX_ENTRIES

/**
 * Shares presence between API nodes over core NATS (a node mesh, see startNodeMesh), without any
 * central store. Each node broadcasts what changed in its own part every `flushMs` (numbered: a
 * receiver that sees a gap asks for the node's full state instead of guessing) and a heartbeat
 * every `heartbeatMs` carrying its latest number. A node not heard from for `ttlMs` is lost: its
 * users leave with `node_lost` (not while this node's own NATS connection is down: then it hears
 * nobody, and the time cut off does not count); so are the users of a run of a node that came back
 * under the same id without a goodbye (it died and restarted in place), once that run has been
 * silent for `ttlMs`. A node stopping cleanly says goodbye: its users leave as `disconnected` after
 * the grace, so clients reconnecting elsewhere meanwhile never leave. A new node says hello and
 * every node answers with its full state.
 */
export function startPresenceCluster(deps: {
  nc: NatsConnection
  prefix: string
  /** This node's id, and an id for this run of it (a restarted node is a new incarnation). */
  node: string
  inc: string
  view: PresenceView
  /** This node's full state now (see LocalPresence.state). */
  localState: () => Map<string, NodePart>
  ttlMs: number
  graceMs: number
  heartbeatMs?: number
  flushMs?: number
  /** Channels whose totals changed by a full-state replacement: their subscribers get a fresh snapshot. */
  onResync: (channels: Set<string>) => void
  /** Another node reports a user gone from a channel for good (`left`, `revoked`): a grace of theirs here ends. */
  onLeft?: (channel: string, user: string, reason: Extract<LeaveReason, 'left' | 'revoked'>) => void
  logger: Logger
  /** The node's watched subscriptions; one of its own when absent. */
  subscriptions?: SubscriptionWatch
  now?: () => number
}) {
  const log = deps.logger.child({ component: 'presence' })
  const pending: ChannelDelta[] = []
  /** This node's latest departures (goneKey -> why), oldest first; a user back in the channel is taken out. */
  const gone = new Map<string, Gone>()
  const remember = (delta: ChannelDelta) => {
    for (const [user] of delta.add ?? []) gone.delete(goneKey(delta.channel, user))
    for (const [user, reason] of delta.remove ?? []) {
      putNewest(gone, goneKey(delta.channel, user), [delta.channel, user, reason], MAX_GONE)
    }
  }
  /** Where the view keeps a run's part: under the node's id, or apart once a new run of it is heard. */
  const keyOf = (run: MeshRun) => (run.current ? run.node : `${run.node}\u0000${run.inc}`)

  /**
   * A user left a channel for good on a live node (`left`, `revoked`): the parts of runs that are
   * over (kept for the grace or the TTL so that reconnecting users neither leave nor join) no
   * longer hold them, or they would leave only when those are dropped, as `disconnected` or
   * `node_lost`. Taken out first: the live node's removal is then their leave, with its reason.
   */
  const leftForGood = (deltas: ChannelDelta[]) => {
    let ending: MeshRun[] | undefined
    for (const d of deltas) {
      for (const [user, reason] of d.remove ?? []) {
        if (reason !== 'left' && reason !== 'revoked') continue
        ending ??= mesh.ending()
        for (const run of ending) deps.view.removeUser(keyOf(run), d.channel, user, reason)
      }
    }
  }

  const full = (): Full[] => {
    const entries: Full['channels'] = []
    for (const [channel, part] of deps.localState()) {
      const users = [...part.users]
      // A channel larger than one message is split; the receiver merges the parts.
      for (let i = 0; i === 0 || i < users.length; i += MAX_ENTRIES) entries.push([channel, part.connections, users.slice(i, i + MAX_ENTRIES)])
    }
    const parts: Full[] = pack(entries, (e) => e[2].length + 1, MAX_ENTRIES).map((channels) => ({ channels }))
    if (parts.length === 0) parts.push({ channels: [] })
    // The reasons of the latest departures go last, in a part of their own.
    if (gone.size > 0) parts.push({ channels: [], gone: [...gone.values()] })
    return parts
  }

  const replace = (node: string, parts: Full[]) => {
    const state = new Map<string, NodePart>()
    const reasons = new Map<string, LeaveReason>()
    for (const p of parts) {
      for (const [channel, user, reason] of p.gone ?? []) reasons.set(goneKey(channel, user), reason)
      for (const [channel, connections, users] of p.channels) {
        const part = state.get(channel) ?? { connections, users: new Map() }
        for (const [user, name] of users) part.users.set(user, name)
        state.set(channel, part)
      }
    }
    const touched = deps.view.replace(node, state, reasons)
    if (touched.size > 0) deps.onResync(touched)
  }

  const mesh = startNodeMesh<Delta, Full>({
    nc: deps.nc, node: deps.node, inc: deps.inc, ttlMs: deps.ttlMs, heartbeatMs: deps.heartbeatMs, subscriptions: deps.subscriptions, now: deps.now,
    subject: `${deps.prefix}.presence.node`,
    wantSubject: `${deps.prefix}.presence.want`,
    name: 'presence',
    flushMs: deps.flushMs ?? 100,
    // Cut off from NATS, silence says nothing of the others: their users are kept (they are
    // probably still connected) until it is back and the TTL has passed again without a word.
    cutOff: 'keep',
    // Its clients are reconnecting elsewhere: they leave only if they have not come back within
    // the grace.
    byeGraceMs: deps.graceMs,
    // Split so that no message carries more than MAX_ENTRIES users; each part is a numbered delta.
    deltas: () => pack(pending.splice(0), (d) => (d.add?.length ?? 0) + (d.remove?.length ?? 0) + 1, MAX_ENTRIES).map((deltas) => ({ deltas })),
    full,
    delta: (node, m, inOrder) => {
      if (!inOrder) return
      leftForGood(m.deltas)
      deps.view.apply(node, m.deltas)
      for (const d of m.deltas) for (const [user, reason] of d.remove ?? []) if (reason === 'left' || reason === 'revoked') deps.onLeft?.(d.channel, user, reason)
    },
    replace,
    retire: (run, saidBye) => {
      // A new run of the node came back under the same id (a container restarted in place: same
      // hostname, pid 1). Its last run's users are filed apart, so that those reconnecting (to
      // the new run or elsewhere) neither leave nor join: after a goodbye they stay for the rest
      // of the grace; if it died (SIGKILLed, then restarted in place before the TTL ran out) they
      // were lost with it, and leave with `node_lost` once that run has been silent for the TTL.
      if (!saidBye) log.warn({ node: run.node }, "presence: a node came back without a goodbye; its last run's users leave unless back within the TTL")
      deps.view.rename(run.node, keyOf(run))
    },
    drop: (run, reason) => {
      deps.onResync(deps.view.drop(keyOf(run), reason === 'bye' ? 'disconnected' : 'node_lost'))
    },
    logger: log,
  })

  return {
    /** Where the node's local presence reports its changes: counted at once here, told to the others at the next flush. */
    local: (delta: ChannelDelta) => {
      remember(delta)
      leftForGood([delta])
      deps.view.apply(deps.node, [delta])
      pending.push(delta)
    },
    /** Nodes this one hears from (itself not included; not those that said goodbye). */
    peers: mesh.peers,
    /** Says goodbye (the others keep this node's users for the grace) and stops. */
    stop: mesh.stop,
  }
}

export type PresenceCluster = ReturnType<typeof startPresenceCluster>
