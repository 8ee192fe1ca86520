import type { Sink } from '../realtime/channel-hub'
import type { LeaveReason, PresenceChange, PresenceView } from './view'

/** The presence channel of a channel: `presence:<channel>`. */
export const presenceChannelOf = (channel: string) => `presence:${channel}`

/** Channel kinds whose subscribers are tracked (chat rooms, streams, and the match channels of games). */
export const TRACKED_KINDS = ['chat', 'stream', 'match'] as const

export const isTracked = (channel: string) => TRACKED_KINDS.some((k) => channel.startsWith(`${k}:`))

/** What a presence snapshot and `GET /v1/presence/:channel` hold. */
export type PresenceSnapshot = {
  channel: string
  connections: number
  users: number
  /** Present users with their display names; only for channels of at most FANFARE_PRESENCE_MAX_MEMBERS users. */
  members?: { user: string; name?: string }[]
  asOf: string
}

export function presenceSnapshot(view: PresenceView, channel: string, maxMembers: number, now = Date.now()): PresenceSnapshot {
  const t = view.of(channel)
  return {
    channel,
    connections: t.connections,
    users: t.users.size,
    ...(t.users.size <= maxMembers ? { members: [...t.users].map(([user, u]) => ({ user, ...(u.name !== undefined ? { name: u.name } : {}) })).sort((a, b) => (a.user < b.user ? -1 : 1)) } : {}),
    asOf: new Date(now).toISOString(),
  }
}

/** The counts every presence update carries. */
type Counts = { connections: number; users: number }

/**
 * An update of `presence:<channel>`: a user joined, left or, present already, changed their
 * display name (channels with members), or only the counts changed.
 */
export type PresenceUpdate =
  | ({ kind: 'join'; user: string; name?: string } & Counts)
  | ({ kind: 'leave'; user: string; reason: LeaveReason } & Counts)
  | ({ kind: 'update'; user: string; name: string } & Counts)
  | ({ kind: 'count' } & Counts)

type Watched = {
  version: number
  epoch: string
  /** Whether the subscribers were last told members (a channel of at most maxMembers users). */
  withMembers: boolean
  /** Counts changed and not yet told (coalesced to at most one frame per interval). */
  dirty: boolean
  /** When the subscribers were last sent a snapshot for crossing the member limit. */
  reshapedAt: number
  /** A crossing came within the interval of the last one: the next tick sends the snapshot. */
  reshapeDue: boolean
  subscribers: Set<string>
}

/**
 * Presence frames for this node's subscribers of `presence:<channel>`. A channel of at most
 * `maxMembers` users gets `join` and `leave` updates as they happen (each with the new counts);
 * a bigger one only `count` updates, at most one per `intervalMs`, whatever happens in it: a join in
 * a 10,000-viewer channel costs its presence subscribers one frame per interval, not one each.
 * Crossing the member limit either way (at most once per `intervalMs`: a crossing sooner than that
 * after the last one, and every change until then, is told by a snapshot at the next tick), or a
 * change this node cannot account for update by update (updates from another node were missed),
 * sends a fresh snapshot marked `resync`.
 *
 * Frames carry a version (+1 per frame) and an epoch naming this node's run and the channel's
 * watch: a resume on another node always gets a snapshot.
 */
export function createPresenceFeed(deps: {
  view: PresenceView
  publish: (topic: string, text: string) => void
  maxMembers: number
  intervalMs: number
  /** This node's run, for epochs. */
  inc: string
  now?: () => number
}) {
  const now = deps.now ?? Date.now
  const watched = new Map<string, Watched>()
  let generation = 0

  const frame = (w: Watched, channel: string, data: PresenceUpdate) => {
    w.version++
    deps.publish(presenceChannelOf(channel), JSON.stringify({ op: 'update', channel: presenceChannelOf(channel), version: w.version, epoch: w.epoch, data }))
  }
  const snapshotFrame = (w: Watched, channel: string, resync: boolean) => {
    const data = presenceSnapshot(deps.view, channel, deps.maxMembers, now())
    w.withMembers = data.members !== undefined
    w.dirty = false
    return JSON.stringify({ op: 'snapshot', channel: presenceChannelOf(channel), version: w.version, epoch: w.epoch, data, ...(resync ? { resync: true } : {}) })
  }
  const counts = (channel: string): Counts => {
    const t = deps.view.of(channel)
    return { connections: t.connections, users: t.users.size }
  }

  const reshape = (w: Watched, channel: string) => {
    w.reshapeDue = false
    w.reshapedAt = now()
    w.version++
    deps.publish(presenceChannelOf(channel), snapshotFrame(w, channel, true))
  }

  const timer = setInterval(() => {
    for (const [channel, w] of watched) {
      if (w.reshapeDue) {
        reshape(w, channel)
        continue
      }
      if (!w.dirty) continue
      w.dirty = false
      frame(w, channel, { kind: 'count', ...counts(channel) })
    }
  }, deps.intervalMs)

  return {
    /** Feeds a change of a channel's totals (from the view). */
    onChange(change: PresenceChange) {
      const w = watched.get(change.channel)
      // A snapshot is due at the next tick: it tells this change too.
      if (!w || w.reshapeDue) return
      const c = counts(change.channel)
      const small = c.users <= deps.maxMembers
      if (small !== w.withMembers) {
        // Crossed the member limit: the subscribers' state changes shape, told by a snapshot of
        // every member to every presence subscriber. One user toggling a channel at the limit
        // would make one per toggle, so at most one per interval; changes meanwhile wait for it.
        if (now() - w.reshapedAt < deps.intervalMs) w.reshapeDue = true
        else reshape(w, change.channel)
        return
      }
      // No members listed: a new display name changes nothing the subscribers hold.
      if (!small && change.kind === 'update') return
      if (!small || change.kind === 'count') {
        w.dirty = true
        return
      }
      // The frame carries the counts as they are now: a count change waiting for the interval
      // (the view moves the connections before a join or leave) is told by it, not again.
      w.dirty = false
      if (change.kind === 'join') frame(w, change.channel, { kind: 'join', user: change.user, ...(change.name !== undefined ? { name: change.name } : {}), ...c })
      else if (change.kind === 'update') frame(w, change.channel, { kind: 'update', user: change.user, name: change.name, ...c })
      else frame(w, change.channel, { kind: 'leave', user: change.user, reason: change.reason, ...c })
    },

    /** Channels whose totals changed in a way not told update by update: fresh snapshots. */
    resync(channels: Iterable<string>) {
      for (const channel of channels) {
        const w = watched.get(channel)
        if (!w) continue
        w.version++
        deps.publish(presenceChannelOf(channel), snapshotFrame(w, channel, true))
      }
    },

    /**
     * Subscribes a socket to `presence:<channel>`: its snapshot now, then every update (the socket
     * joins the topic in the same turn, so nothing falls in between). `resync` marks the snapshot
     * (a refused resume).
     */
    subscribe(sink: Sink, channel: string, resync = false) {
      let w = watched.get(channel)
      if (!w) {
        w = { version: 0, epoch: `${deps.inc}.${++generation}`, withMembers: false, dirty: false, reshapedAt: Number.NEGATIVE_INFINITY, reshapeDue: false, subscribers: new Set() }
        watched.set(channel, w)
      }
      w.subscribers.add(sink.id)
      if (w.dirty) {
        // Counts waiting for the interval: everyone gets them now, so the new snapshot and the
        // topic agree.
        w.dirty = false
        frame(w, channel, { kind: 'count', ...counts(channel) })
      }
      const text = snapshotFrame(w, channel, resync)
      if (sink.send(text) === 0) return sink.overflow()
      sink.subscribe(presenceChannelOf(channel))
    },

    unsubscribe(sink: Sink, channel: string): boolean {
      const w = watched.get(channel)
      if (!w || !w.subscribers.delete(sink.id)) return false
      sink.unsubscribe(presenceChannelOf(channel))
      if (w.subscribers.size === 0) watched.delete(channel)
      return true
    },

    stop() {
      clearInterval(timer)
      watched.clear()
    },
  }
}

export type PresenceFeed = ReturnType<typeof createPresenceFeed>
