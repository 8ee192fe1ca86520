import type { ChangeNotice } from '../../../core/channels'

/** A channel's state as read from the read model: its version and the data to show. */
export type Snapshot = { version: number; data: unknown }

/** One WebSocket as the hub sees it. `send` returns Bun's status: > 0 sent, -1 queued, 0 dropped. */
export type Sink = {
  id: string
  send: (text: string) => number
  subscribe: (topic: string) => void
  unsubscribe: (topic: string) => void
  /** Called when the client can no longer be kept in sync (its queue overflowed). */
  overflow: () => void
}

export type HubDeps = {
  /** Reads a channel's current snapshot (version and data read consistently). */
  snapshot: (channel: string) => Promise<Snapshot>
  /** Sends a frame to every socket subscribed to a topic (Bun's server.publish). */
  publish: (topic: string, text: string) => void
  /** How long an out-of-order notice waits for the missing one before subscribers are re-synced. */
  gapTimeoutMs: number
  onError?: (err: unknown, channel: string) => void
}

/** A subscriber that is not yet on the channel's topic: reading its snapshot, or catching up. */
type Joiner = {
  sink: Sink
  /** Notices delivered while the snapshot was read; null once the snapshot was sent. */
  buffer: ChangeNotice[] | null
  /** Last version this subscriber has been sent. */
  version: number
  cancelled: boolean
}

type ChannelState = {
  /** Last version published to the topic, in order. Undefined until the first snapshot. */
  last: number | undefined
  /** Notices that arrived ahead of a missing version. */
  held: Map<number, ChangeNotice>
  joiners: Set<Joiner>
  members: Set<string>
  gapTimer: ReturnType<typeof setTimeout> | undefined
  resyncing: boolean
}

export const frames = {
  snapshot: (channel: string, s: Snapshot, resync = false) =>
    JSON.stringify(resync ? { op: 'snapshot', channel, version: s.version, data: s.data, resync: true } : { op: 'snapshot', channel, version: s.version, data: s.data }),
  update: (n: ChangeNotice) => JSON.stringify({ op: 'update', channel: n.channel, version: n.version, data: n.data }),
}

/**
 * Keeps this node's subscribers of each channel gap-free and in version order.
 *
 * Notices can reach a node out of order (two workers commit versions 5 and 6 of one board and
 * publish in the other order) or late (a crash between commit and publish delays one until the
 * outbox sweep). The hub therefore publishes to a channel's topic strictly in version order,
 * holding notices that arrive early. If a missing version does not arrive within `gapTimeoutMs`,
 * every subscriber gets a fresh snapshot marked `resync: true`: never a silent gap.
 *
 * A new subscriber is buffered from the moment it asks, then gets the snapshot, then the buffered
 * notices newer than the snapshot, and joins the shared topic only once it has everything the topic
 * has had: no loss and no repeat between snapshot and live updates.
 */
export function createChannelHub(deps: HubDeps) {
  const channels = new Map<string, ChannelState>()

  function stateOf(channel: string): ChannelState {
    let st = channels.get(channel)
    if (!st) {
      st = { last: undefined, held: new Map(), joiners: new Set(), members: new Set(), gapTimer: undefined, resyncing: false }
      channels.set(channel, st)
    }
    return st
  }

  function sendTo(joiner: Joiner, text: string): boolean {
    if (joiner.sink.send(text) === 0) {
      joiner.cancelled = true
      joiner.sink.overflow()
      return false
    }
    return true
  }

  /** Publishes one in-order notice to the topic and to joiners that are catching up. */
  function deliver(channel: string, st: ChannelState, notice: ChangeNotice) {
    st.last = notice.version
    const text = frames.update(notice)
    deps.publish(channel, text)
    for (const j of st.joiners) {
      if (j.buffer) j.buffer.push(notice)
      else if (notice.version === j.version + 1 && sendTo(j, text)) j.version = notice.version
      promoteIfCaughtUp(channel, st, j)
    }
  }

  function promoteIfCaughtUp(channel: string, st: ChannelState, j: Joiner) {
    if (j.cancelled) {
      st.joiners.delete(j)
      return
    }
    if (j.buffer === null && st.last !== undefined && j.version === st.last) {
      j.sink.subscribe(channel)
      st.joiners.delete(j)
    }
  }

  function drain(channel: string, st: ChannelState) {
    if (st.last === undefined) return
    for (const v of st.held.keys()) if (v <= st.last) st.held.delete(v)
    let next = st.held.get(st.last + 1)
    while (next) {
      st.held.delete(next.version)
      deliver(channel, st, next)
      next = st.held.get(st.last + 1)
    }
    if (st.held.size === 0) {
      clearTimeout(st.gapTimer)
      st.gapTimer = undefined
    } else if (!st.gapTimer) {
      st.gapTimer = setTimeout(() => void resync(channel), deps.gapTimeoutMs)
    }
  }

  /** A version never arrived: re-read the channel and restart every subscriber from it. */
  async function resync(channel: string) {
    const st = channels.get(channel)
    if (!st || st.resyncing) return
    st.gapTimer = undefined
    st.resyncing = true
    try {
      const snap = await deps.snapshot(channel)
      if (channels.get(channel) !== st) return
      const text = frames.snapshot(channel, snap, true)
      deps.publish(channel, text)
      for (const j of st.joiners) {
        if (j.buffer === null && sendTo(j, text)) j.version = snap.version
      }
      st.last = Math.max(st.last ?? 0, snap.version)
      for (const j of [...st.joiners]) promoteIfCaughtUp(channel, st, j)
      drain(channel, st)
    } catch (err) {
      deps.onError?.(err, channel)
      st.gapTimer = setTimeout(() => void resync(channel), deps.gapTimeoutMs)
    } finally {
      st.resyncing = false
    }
  }

  function cleanup(channel: string) {
    const st = channels.get(channel)
    if (st && st.members.size === 0) {
      clearTimeout(st.gapTimer)
      channels.delete(channel)
    }
  }

  return {
    /** Feeds one change notice from NATS. Notices for channels nobody here watches are ignored. */
    onNotice(notice: ChangeNotice) {
      const st = channels.get(notice.channel)
      if (!st) return
      if (st.last !== undefined && notice.version <= st.last) return // duplicate or already in a snapshot
      st.held.set(notice.version, notice)
      drain(notice.channel, st)
    },

    /**
     * Subscribes a socket: sends the snapshot, then every later update exactly once, in order.
     * Resolves once the snapshot was sent (or the subscription was cancelled meanwhile).
     */
    async subscribe(sink: Sink, channel: string): Promise<void> {
      const st = stateOf(channel)
      if (st.members.has(sink.id)) return
      st.members.add(sink.id)
      const joiner: Joiner = { sink, buffer: [], version: 0, cancelled: false }
      st.joiners.add(joiner)
      try {
        for (let attempt = 1; ; attempt++) {
          if (attempt > 20) throw new Error(`could not read a snapshot of ${channel} that joins its live updates`)
          const snap = await deps.snapshot(channel)
          if (joiner.cancelled || channels.get(channel) !== st) return
          if (st.last === undefined) {
            st.last = snap.version // the first snapshot sets where this node's topic starts
            drain(channel, st)
          }
          // The snapshot plus the buffer must reach what the topic has already had, without a hole.
          const buffered = joiner.buffer!.filter((n) => n.version > snap.version).sort((a, b) => a.version - b.version)
          const contiguous = buffered.every((n, i) => n.version === snap.version + i + 1)
          const reaches = (buffered.at(-1)?.version ?? snap.version) >= st.last!
          if (!contiguous || !reaches) continue // read before notices this node already published: read again
          joiner.buffer = null
          if (!sendTo(joiner, frames.snapshot(channel, snap))) return
          joiner.version = snap.version
          for (const n of buffered) {
            if (!sendTo(joiner, frames.update(n))) return
            joiner.version = n.version
          }
          promoteIfCaughtUp(channel, st, joiner)
          return
        }
      } catch (err) {
        joiner.cancelled = true
        st.joiners.delete(joiner)
        st.members.delete(sink.id)
        cleanup(channel)
        throw err
      }
    },

    /** Removes a socket from a channel. Returns false if it was not subscribed. */
    unsubscribe(sink: Sink, channel: string): boolean {
      const st = channels.get(channel)
      if (!st || !st.members.delete(sink.id)) return false
      for (const j of st.joiners) if (j.sink.id === sink.id) (j.cancelled = true), st.joiners.delete(j)
      sink.unsubscribe(channel)
      cleanup(channel)
      return true
    },

    /** Forgets a closed socket on every channel it had. */
    removeSink(sink: Sink, subscribed: Iterable<string>) {
      for (const channel of subscribed) {
        const st = channels.get(channel)
        if (!st) continue
        st.members.delete(sink.id)
        for (const j of st.joiners) if (j.sink.id === sink.id) (j.cancelled = true), st.joiners.delete(j)
        cleanup(channel)
      }
    },

    /** Channels watched on this node, with their subscriber counts (for metrics and tests). */
    stats() {
      return [...channels].map(([channel, st]) => ({ channel, subscribers: st.members.size, version: st.last ?? null, held: st.held.size }))
    },

    stop() {
      for (const st of channels.values()) clearTimeout(st.gapTimer)
      channels.clear()
    },
  }
}

export type ChannelHub = ReturnType<typeof createChannelHub>
