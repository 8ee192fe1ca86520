import type { NatsConnection } from '@nats-io/transport-node'
import type { Logger } from '../../../core/logger'
import { createSubscriptionWatch, type SubscriptionWatch } from '../../../core/nats-subscriptions'
import { putNewest } from '../../../core/newest'
import { goneKey, type ChannelDelta, type LeaveReason, type NodePart, type PresenceView } from './view'

/** What nodes say to each other on `<prefix>.presence.node` (core NATS). */
type Message =
  | { type: 'hello'; node: string; inc: string }
  | { type: 'hb'; node: string; inc: string; seq: number }
  | { type: 'delta'; node: string; inc: string; seq: number; deltas: ChannelDelta[] }
  | { type: 'full'; node: string; inc: string; seq: number; part: number; parts: number; channels: [string, number, [string, string | undefined][]][]; gone?: Gone[] }
  | { type: 'bye'; node: string; inc: string }

type Replica = { inc: string; seq: number; lastHeard: number; ready: boolean; asked: number; full?: { seq: number; parts: Message[] }; leaving?: unknown }

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
 * Shares presence between API nodes over core NATS, without any central store. Each node
 * broadcasts what changed in its own part every `flushMs` (numbered: a receiver that sees a gap
 * asks for the node's full state instead of guessing) and a heartbeat every `heartbeatMs`
 * carrying its latest number. A node not heard from for `ttlMs` is lost: its users leave with
 * `node_lost` (not while this node's own NATS connection is down: then it hears nobody, and the
 * time cut off does not count); so are the users of a run of a node that came back under the same
 * id without a goodbye (it died and restarted in place), once that run has been silent for `ttlMs`. A node
 * stopping cleanly says goodbye: its users leave as `disconnected` after the grace, so clients
 * reconnecting elsewhere meanwhile never leave. A new node says hello and every node answers with
 * its full state.
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
  const now = deps.now ?? Date.now
  const subject = `${deps.prefix}.presence.node`
  const wantSubject = `${deps.prefix}.presence.want`
  const log = deps.logger.child({ component: 'presence' })
  const heartbeatMs = deps.heartbeatMs ?? Math.min(1000, Math.floor(deps.ttlMs / 5))
  const replicas = new Map<string, Replica>()
  /** Parts of runs that died without a goodbye and whose node is back under the same id (view key -> when last heard). */
  const deadRuns = new Map<string, number>()
  /** View keys of the parts of runs that said goodbye, kept for the grace. */
  const parting = new Set<string>()
  let seq = 0
  let pending: ChannelDelta[] = []
  /** This node's latest departures (goneKey -> why), oldest first; a user back in the channel is taken out. */
  const gone = new Map<string, Gone>()
  const remember = (delta: ChannelDelta) => {
    for (const [user] of delta.add ?? []) gone.delete(goneKey(delta.channel, user))
    for (const [user, reason] of delta.remove ?? []) {
      putNewest(gone, goneKey(delta.channel, user), [delta.channel, user, reason], MAX_GONE)
    }
  }
  let stopped = false
  /** False while this node's NATS connection is down: then it hears nobody, and cannot tell who died. */
  let connected = true

  const send = (m: Message) => {
    if (deps.nc.isClosed()) return
    try {
      deps.nc.publish(subject, JSON.stringify(m))
    } catch (err) {
      log.debug({ err }, 'presence message not sent')
    }
  }

  /**
   * A user left a channel for good on a live node (`left`, `revoked`): the parts of runs that are
   * over (kept for the grace or the TTL so that reconnecting users neither leave nor join) no
   * longer hold them, or they would leave only when those are dropped, as `disconnected` or
   * `node_lost`. Taken out first: the live node's removal is then their leave, with its reason.
   */
  const leftForGood = (deltas: ChannelDelta[]) => {
    if (deadRuns.size === 0 && parting.size === 0) return
    for (const d of deltas) {
      for (const [user, reason] of d.remove ?? []) {
        if (reason !== 'left' && reason !== 'revoked') continue
        for (const run of [...deadRuns.keys(), ...parting]) deps.view.removeUser(run, d.channel, user, reason)
      }
    }
  }
  /** A local change: counted at once here, told to the others at the next flush. */
  const local = (delta: ChannelDelta) => {
    remember(delta)
    leftForGood([delta])
    deps.view.apply(deps.node, [delta])
    pending.push(delta)
  }

  const flush = () => {
    if (pending.length === 0) return
    const deltas = pending
    pending = []
    // Split so that no message carries more than MAX_ENTRIES users; each part is a numbered delta.
    let chunk: ChannelDelta[] = []
    let entries = 0
    const out = () => {
      if (chunk.length === 0) return
      send({ type: 'delta', node: deps.node, inc: deps.inc, seq: ++seq, deltas: chunk })
      chunk = []
      entries = 0
    }
    for (const d of deltas) {
      const size = (d.add?.length ?? 0) + (d.remove?.length ?? 0) + 1
      if (entries + size > MAX_ENTRIES) out()
      chunk.push(d)
      entries += size
    }
    out()
  }

  const sendFull = () => {
    const state = deps.localState()
    const entries: [string, number, [string, string | undefined][]][] = []
    for (const [channel, part] of state) {
      const users = [...part.users]
      // A channel larger than one message is split; the receiver merges the parts.
      for (let i = 0; i === 0 || i < users.length; i += MAX_ENTRIES) entries.push([channel, part.connections, users.slice(i, i + MAX_ENTRIES)])
    }
    const parts: (typeof entries)[] = [[]]
    let size = 0
    for (const e of entries) {
      if (size + e[2].length + 1 > MAX_ENTRIES && parts.at(-1)!.length > 0) {
        parts.push([])
        size = 0
      }
      parts.at(-1)!.push(e)
      size += e[2].length + 1
    }
    // The reasons of the latest departures go last, in a part of their own.
    const last = gone.size > 0 ? parts.length : -1
    const count = parts.length + (last >= 0 ? 1 : 0)
    flush()
    parts.forEach((channels, part) => send({ type: 'full', node: deps.node, inc: deps.inc, seq, part, parts: count, channels }))
    if (last >= 0) send({ type: 'full', node: deps.node, inc: deps.inc, seq, part: last, parts: count, channels: [], gone: [...gone.values()] })
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

  /** Where the view keeps the part of a run of `node` that said goodbye once a new run of it is heard. */
  const lastRun = (node: string, inc: string) => `${node}\u0000${inc}`

  const replicaOf = (m: { node: string; inc: string }): Replica => {
    let r = replicas.get(m.node)
    if (!r || r.inc !== m.inc) {
      if (r?.leaving !== undefined) {
        // The node said goodbye and a new run came back under the same id (a container restarted
        // in place: same hostname, pid 1). Its last run's users stay for the rest of the grace, as
        // after any goodbye, filed apart, so that those reconnecting to the new run neither leave
        // nor join; its goodbye timer drops them then.
        deps.view.rename(m.node, lastRun(m.node, r.inc))
        parting.delete(m.node)
        parting.add(lastRun(m.node, r.inc))
      } else if (r) {
        // The node died and came back under the same id (SIGKILLed, then restarted in place)
        // before the TTL ran out: its last run's users were lost with it, as if it had not come
        // back. Filed apart, they leave with `node_lost` once that run has been silent for the
        // TTL: those reconnecting meanwhile (to the new run or elsewhere) neither leave nor join.
        log.warn({ node: m.node }, 'presence: a node came back without a goodbye; its last run\'s users leave unless back within the TTL')
        deps.view.rename(m.node, lastRun(m.node, r.inc))
        deadRuns.set(lastRun(m.node, r.inc), r.lastHeard)
      }
      r = { inc: m.inc, seq: 0, lastHeard: now(), ready: false, asked: 0 }
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
    const r = replicaOf(m)
    r.lastHeard = now()
    if (r.leaving !== undefined) {
      clearTimeout(r.leaving as ReturnType<typeof setTimeout>)
      r.leaving = undefined
      parting.delete(m.node)
    }
    switch (m.type) {
      case 'hb':
        if (!r.ready || m.seq !== r.seq) ask(m.node, r)
        return
      case 'delta':
        if (r.ready && m.seq === r.seq + 1) {
          r.seq = m.seq
          leftForGood(m.deltas)
          deps.view.apply(m.node, m.deltas)
          for (const d of m.deltas) for (const [user, reason] of d.remove ?? []) if (reason === 'left' || reason === 'revoked') deps.onLeft?.(d.channel, user, reason)
        } else if (!r.ready || m.seq > r.seq) {
          r.ready = false
          ask(m.node, r)
        }
        return
      case 'full': {
        if (!r.full || r.full.seq !== m.seq || m.part === 0) r.full = { seq: m.seq, parts: [] }
        r.full.parts[m.part] = m
        if (r.full.parts.filter(Boolean).length < m.parts) return
        const state = new Map<string, NodePart>()
        const reasons = new Map<string, LeaveReason>()
        for (const p of r.full.parts as Extract<Message, { type: 'full' }>[]) {
          for (const [channel, user, reason] of p.gone ?? []) reasons.set(goneKey(channel, user), reason)
          for (const [channel, connections, users] of p.channels) {
            const part = state.get(channel) ?? { connections, users: new Map() }
            for (const [user, name] of users) part.users.set(user, name)
            state.set(channel, part)
          }
        }
        r.full = undefined
        r.seq = m.seq
        r.ready = true
        const touched = deps.view.replace(m.node, state, reasons)
        if (touched.size > 0) deps.onResync(touched)
        return
      }
      case 'bye': {
        // Its clients are reconnecting elsewhere: they leave only if they have not come back
        // within the grace.
        parting.add(m.node)
        r.leaving = setTimeout(() => {
          if (stopped) return
          if (replicas.get(m.node) !== r) {
            // A new run of the node is heard meanwhile (replicaOf): only this run's users leave.
            parting.delete(lastRun(m.node, r.inc))
            deps.onResync(deps.view.drop(lastRun(m.node, r.inc), 'disconnected'))
            return
          }
          parting.delete(m.node)
          replicas.delete(m.node)
          deps.onResync(deps.view.drop(m.node, 'disconnected'))
        }, deps.graceMs)
        return
      }
      default: {
        const never: never = m
        log.warn({ message: never }, 'unknown presence message')
      }
    }
  }

  const subscriptions = deps.subscriptions ?? createSubscriptionWatch({ nc: deps.nc, logger: deps.logger })
  // Messages missed while NATS denied a subscription: say hello again, as after a reconnect.
  const hello = () => {
    if (!stopped) send({ type: 'hello', node: deps.node, inc: deps.inc })
  }
  const sub = subscriptions.subscribe(subject, {
    name: 'presence',
    onMessage: (msg) => {
      if (stopped) return
      try {
        receive(msg.json<Message>())
      } catch (e) {
        log.warn({ err: e }, 'unreadable presence message')
      }
    },
    onRestored: hello,
  })
  const wants = subscriptions.subscribe(wantSubject, {
    name: 'presence_want',
    onMessage: (msg) => {
      if (!stopped && msg.string() === deps.node) sendFull()
    },
    onRestored: hello,
  })

  const flusher = setInterval(flush, deps.flushMs ?? 100)
  const beats = setInterval(() => {
    flush()
    send({ type: 'hb', node: deps.node, inc: deps.inc, seq })
    // Cut off from NATS, silence says nothing of the others: their users are kept (they are
    // probably still connected) until it is back and the TTL has passed again without a word.
    if (!connected) return
    for (const [node, r] of replicas) {
      if (r.leaving === undefined && now() - r.lastHeard > deps.ttlMs) {
        log.warn({ node, silentMs: now() - r.lastHeard }, 'presence: a node went silent; its users leave')
        replicas.delete(node)
        deps.onResync(deps.view.drop(node, 'node_lost' satisfies LeaveReason))
      }
    }
    for (const [run, heard] of deadRuns) {
      if (now() - heard <= deps.ttlMs) continue
      deadRuns.delete(run)
      deps.onResync(deps.view.drop(run, 'node_lost' satisfies LeaveReason))
    }
  }, heartbeatMs)

  // After a reconnect some messages in either direction may be lost: say hello again, so every
  // node sends its full state, and the heartbeats show others where they missed ours. The time
  // cut off counts as no silence: a node is lost only if not heard for the TTL from then on.
  void (async () => {
    for await (const s of deps.nc.status()) {
      if (s.type === 'disconnect') connected = false
      if (s.type !== 'reconnect' || stopped) continue
      connected = true
      const at = now()
      for (const r of replicas.values()) r.lastHeard = Math.max(r.lastHeard, at)
      for (const [run, heard] of deadRuns) deadRuns.set(run, Math.max(heard, at))
      send({ type: 'hello', node: deps.node, inc: deps.inc })
    }
  })().catch(() => {})

  send({ type: 'hello', node: deps.node, inc: deps.inc })

  return {
    /** Where the node's local presence reports its changes. */
    local,
    /** Nodes this one hears from (itself not included; not those that said goodbye). */
    peers: () => [...replicas].filter(([, r]) => r.leaving === undefined).map(([node]) => node),
    /** Says goodbye (the others keep this node's users for the grace) and stops. */
    stop: async () => {
      if (stopped) return
      flush()
      send({ type: 'bye', node: deps.node, inc: deps.inc })
      stopped = true
      clearInterval(flusher)
      clearInterval(beats)
      for (const r of replicas.values()) if (r.leaving !== undefined) clearTimeout(r.leaving as ReturnType<typeof setTimeout>)
      sub.unsubscribe()
      wants.unsubscribe()
      await deps.nc.flush().catch(() => {})
    },
  }
}

export type PresenceCluster = ReturnType<typeof startPresenceCluster>
