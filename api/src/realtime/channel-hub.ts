import { parseChannel, type ChangeNotice, type ChannelKind } from '../../../core/channels'

/**
 * A channel's state as read from the read model: its version, epoch and the data to show, and
 * `until` (ms since the epoch) when what it shows stops being current by the clock alone (a
 * leaderboard period ends): the hub then re-syncs the channel's subscribers with a fresh snapshot.
 * `from`: when what it shows became current (the period began); a resume point reached before
 * then may hold an earlier period, which no version says (see historyInPeriod).
 */
export type Snapshot = { version: number; epoch: string; data: unknown; until?: number; from?: number }

/** Where a resuming client is: the last version it has, and that version's epoch. */
export type ResumePoint = { since: number; epoch: string }

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
  /** Reads a channel's current snapshot (version, epoch and data read consistently). */
  snapshot: (channel: string) => Promise<Snapshot>
  /** Reads the channel's notices newer than `after` still kept in the shared history (any order). */
  history?: (channel: string, after: number) => Promise<ChangeNotice[]>
  /** Sends a frame to every socket subscribed to a topic (Bun's server.publish). */
  publish: (topic: string, text: string) => void
  /** How long an out-of-order notice waits for the missing one before subscribers are re-synced. */
  gapTimeoutMs: number
  /** Most updates a resume replays; further behind gets a snapshot. Default MAX_REPLAY. */
  maxReplay?: number
  onError?: (err: unknown, channel: string) => void
  /** The timers of gap timeouts (tests pass their own clock). Default: setTimeout / clearTimeout. */
  timers?: Timers
  /**
   * Channels whose updates are coalesced: at most one frame per `ms` reaches the topic, carrying
   * every update of the window merged (`merge` folds one update's data into the window's). Such a
   * frame has `from` (its first version) and `version` (its last). Undefined: one frame per update.
   */
  windowOf?: (channel: string) => Window | undefined
  /**
   * Told of each update as it goes out to the channel's topic (a windowed channel: the newest
   * update of each frame), for the commit-to-push metrics.
   */
  onPushed?: (notice: ChangeNotice) => void
}

/** How a windowed channel coalesces its updates (see HubDeps.windowOf). */
export type Window = { ms: number; merge: (into: unknown, next: unknown) => unknown }

/** Timers as the hub uses them. */
export type Timers = { set: (fn: () => void, ms: number) => unknown; clear: (handle: unknown) => void }

/** The longest delay setTimeout holds (2^31 - 1 ms, about 24.8 days): a longer one runs after 1 ms. */
const MAX_TIMER_MS = 2 ** 31 - 1

const realTimers: Timers = { set: (fn, ms) => setTimeout(fn, ms), clear: (h) => clearTimeout(h as ReturnType<typeof setTimeout>) }

/** A subscriber that is not yet on the channel's topic: reading its snapshot or history, or catching up. */
type Joiner = {
  sink: Sink
  /** Notices delivered while the snapshot or history was read; null once the first frame was sent. */
  buffer: ChangeNotice[] | null
  /** Last version this subscriber has been sent. */
  version: number
  cancelled: boolean
}

type ChannelState = {
  /** Last version published to the topic, in order. Undefined until the first snapshot. */
  last: number | undefined
  /** Epoch of `last`; '' while the channel has had no change at all (version 0 is in every epoch). */
  epoch: string | undefined
  /** Epochs this node has moved away from: their late notices are dropped, not a reason to resync. */
  retired: Set<string>
  /** Notices that arrived ahead of a missing version (or before the first snapshot). */
  held: Map<number, ChangeNotice>
  joiners: Set<Joiner>
  members: Set<string>
  gapTimer: unknown
  /**
   * The running resync, if any; `again` asks for one more once it ends (a notice came during it).
   * While it runs nothing is delivered to the topic (notices are held): its snapshot, read after
   * the last delivery, is then never older than what the topic has had.
   */
  resyncing: Promise<void> | undefined
  again: boolean
  /**
   * How many times `epoch` changed. A read that began before a change and shows another epoch
   * than the current one is stale (see isStale): epochs have no order, so only this tells a read
   * of a history the node already left from a new history.
   */
  epochMoves: number
  /** The snapshot read that joiners of this state share (see sharedSnapshot). */
  read: Promise<Read> | undefined
  /** History reads waiting to start together (see sharedHistory). */
  historyBatch: { after: number; result: Promise<ChangeNotice[]> } | undefined
  /** A windowed channel's coalescing, and the updates delivered in the current window (not yet on the topic). */
  window: Window | undefined
  pending: { from: ChangeNotice; to: ChangeNotice; data: unknown } | undefined
  windowTimer: unknown
  /** The re-sync due when the current snapshot stops being current (Snapshot.until). */
  rollover: { at: number; timer: unknown } | undefined
  /** When the latest period seen in a snapshot began (Snapshot.from); undefined for channels without periods. */
  periodFrom: number | undefined
}

/** A snapshot read, with the state's `epochMoves` when it began. */
type Read = { snap: Snapshot; moves: number }

export const frames = {
  snapshot: (channel: string, s: Snapshot, resync = false) =>
    JSON.stringify({ op: 'snapshot', channel, version: s.version, epoch: s.epoch, data: s.data, ...(resync ? { resync: true } : {}) }),
  update: (n: ChangeNotice) => JSON.stringify({ op: 'update', channel: n.channel, version: n.version, epoch: n.epoch, data: n.data }),
  /** Updates `from`..`to` of a windowed channel as one frame. */
  merged: (from: ChangeNotice, to: ChangeNotice, data: unknown) =>
    from.version === to.version
      ? JSON.stringify({ op: 'update', channel: to.channel, version: to.version, epoch: to.epoch, data })
      : JSON.stringify({ op: 'update', channel: to.channel, from: from.version, version: to.version, epoch: to.epoch, data }),
  recovered: (channel: string, version: number, epoch: string) => JSON.stringify({ op: 'subscribed', channel, version, epoch, recovered: true }),
}

/**
 * How long after a period begins its re-sync has surely reached every subscriber: it runs 50 ms
 * after the end by each node's clock, and commit times (ChangeNotice.at) come from the workers'
 * clocks. Generous: a resume it refuses costs a snapshot, one it serves wrongly a day of stale standings.
 */
const PERIOD_SETTLED_MS = 10_000

/**
 * Keeps this node's subscribers of each channel gap-free and in version order.
 *
 * Notices can reach a node out of order (two workers commit versions 5 and 6 of one board and
 * publish in the other order) or late (a crash between commit and publish delays one until the
 * outbox sweep). The hub therefore publishes to a channel's topic strictly in version order,
 * holding notices that arrive early. If a missing version does not arrive within `gapTimeoutMs`,
 * every subscriber gets a fresh snapshot marked `resync: true`: never a silent gap. A notice of
 * another epoch than the node's (the channel's history was restarted) is a resync too.
 *
 * A new subscriber is buffered from the moment it asks, then gets the snapshot (or, resuming, the
 * history after its version), then the buffered notices newer than that, and joins the shared topic
 * only once it has everything the topic has had: no loss and no repeat between the first frame and
 * live updates.
 */
/** Most updates a resume replays by default; a client further behind gets a resync snapshot. */
export const MAX_REPLAY = 1000

export function createChannelHub(deps: HubDeps) {
  const channels = new Map<string, ChannelState>()
  const maxReplay = deps.maxReplay ?? MAX_REPLAY
  const timers = deps.timers ?? realTimers

  function stateOf(channel: string): ChannelState {
    let st = channels.get(channel)
    if (!st) {
      st = {
        last: undefined,
        epoch: undefined,
        retired: new Set(),
        held: new Map(),
        joiners: new Set(),
        members: new Set(),
        gapTimer: undefined,
        resyncing: undefined,
        again: false,
        epochMoves: 0,
        read: undefined,
        historyBatch: undefined,
        window: deps.windowOf?.(channel),
        pending: undefined,
        windowTimer: undefined,
        rollover: undefined,
        periodFrom: undefined,
      }
      channels.set(channel, st)
    }
    return st
  }

  const gone = (channel: string, st: ChannelState, j: Joiner) => j.cancelled || channels.get(channel) !== st

  function setEpoch(st: ChannelState, epoch: string) {
    if (st.epoch === epoch) return
    st.epoch = epoch
    st.epochMoves++
  }

  /** Reads a snapshot, noting where the state's epoch was when the read began. */
  async function readSnapshot(channel: string, st: ChannelState): Promise<Read> {
    const moves = st.epochMoves
    return { snap: await deps.snapshot(channel), moves }
  }

  /** A read that began before the state's epoch last changed and shows another epoch: read again. */
  const isStale = (st: ChannelState, read: Read) => read.moves !== st.epochMoves && read.snap.epoch !== st.epoch

  function sendTo(joiner: Joiner, text: string): boolean {
    if (joiner.cancelled) return false
    if (joiner.sink.send(text) === 0) {
      joiner.cancelled = true
      joiner.sink.overflow()
      return false
    }
    return true
  }

  function stopGapTimer(st: ChannelState) {
    if (st.gapTimer !== undefined) timers.clear(st.gapTimer)
    st.gapTimer = undefined
  }

  /**
   * Publishes one in-order notice to the topic (a windowed channel: into the window's frame) and
   * to joiners that are catching up.
   */
  function deliver(channel: string, st: ChannelState, notice: ChangeNotice) {
    st.last = notice.version
    const text = frames.update(notice)
    if (st.window) {
      st.pending = st.pending ? { from: st.pending.from, to: notice, data: st.window.merge(st.pending.data, notice.data) } : { from: notice, to: notice, data: notice.data }
      if (st.windowTimer === undefined) st.windowTimer = timers.set(() => flushWindow(channel, st), st.window.ms)
    } else {
      deps.publish(channel, text)
      deps.onPushed?.(notice)
    }
    // Most notices find nobody catching up: no iterator for an empty set (this runs per notice).
    if (st.joiners.size === 0) return
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
      // The window's frame holds versions this joiner already has: out with it before it joins.
      flushWindow(channel, st)
      j.sink.subscribe(channel)
      st.joiners.delete(j)
    }
  }

  /** Publishes a windowed channel's pending updates as one frame (`from`..`version`). */
  function flushWindow(channel: string, st: ChannelState) {
    if (st.windowTimer !== undefined) timers.clear(st.windowTimer)
    st.windowTimer = undefined
    const p = st.pending
    if (!p) return
    st.pending = undefined
    deps.publish(channel, frames.merged(p.from, p.to, p.data))
    deps.onPushed?.(p.to)
  }

  /**
   * A snapshot that is current only until a time (a period ends): re-sync the channel then, so its
   * subscribers are told the new state explicitly. A little after, so the read sees the new period.
   * An earlier re-sync still due is kept: the topic's subscribers hold the period it ends, and a
   * joiner whose read already saw the next period (it subscribed in the moments between the end
   * and the re-sync) must not cancel theirs.
   */
  function scheduleRollover(channel: string, st: ChannelState, snap: Snapshot) {
    if (snap.from !== undefined && Number.isFinite(snap.from)) st.periodFrom = Math.max(st.periodFrom ?? snap.from, snap.from)
    if (snap.until === undefined || !Number.isFinite(snap.until) || (st.rollover && st.rollover.at <= snap.until)) return
    if (st.rollover) timers.clear(st.rollover.timer)
    armRollover(channel, st, snap.until)
  }

  /**
   * setTimeout runs a delay past MAX_TIMER_MS after 1 ms, and a monthly board read early in the
   * month ends up to 31 days (2.7e9 ms) later: that timer re-synced at once, and again after each
   * re-sync, in a loop. A longer wait is taken in steps, re-armed without a re-sync.
   */
  function armRollover(channel: string, st: ChannelState, at: number) {
    const wait = Math.max(0, at - Date.now()) + 50
    st.rollover = {
      at,
      timer: timers.set(() => {
        if (wait > MAX_TIMER_MS) return armRollover(channel, st, at)
        if (st.rollover?.at === at) st.rollover = undefined
        void resync(channel)
      }, Math.min(wait, MAX_TIMER_MS)),
    }
  }

  /** Sets where this node's topic starts, from the first snapshot read for the channel. */
  function init(channel: string, st: ChannelState, snap: Snapshot) {
    scheduleRollover(channel, st, snap)
    if (st.last !== undefined) return
    st.last = snap.version
    setEpoch(st, snap.epoch)
    prune(channel, st)
    drain(channel, st)
    if (st.again && !st.resyncing) {
      st.again = false
      void resync(channel)
    }
  }

  /**
   * Drops held notices the topic no longer needs: at or below `last`, or of another epoch (held
   * before the first snapshot, from an epoch the snapshot predates: a resync moves to it). Only
   * needed when `last` or the epoch moved other than by delivering (first snapshot, resync,
   * the first epoch seen); a notice arriving in the current epoch never needs it.
   */
  function prune(channel: string, st: ChannelState) {
    let foreign = false
    for (const [v, n] of st.held) {
      if (n.epoch !== st.epoch) {
        if (!st.retired.has(n.epoch)) foreign = true
        st.held.delete(v)
      } else if (v <= st.last!) st.held.delete(v)
    }
    if (foreign) void resync(channel)
  }

  /**
   * Publishes the held notices that continue `last`, in order; O(1) per notice delivered. Not while
   * a resync reads its snapshot: they are delivered after it (see ChannelState.resyncing).
   */
  function drain(channel: string, st: ChannelState) {
    if (st.last === undefined || st.resyncing) return
    if (st.epoch === '' && st.held.size > 0) {
      // Nothing had happened when the topic started: the first notice's epoch is the channel's.
      setEpoch(st, [...st.held.values()].sort((a, b) => a.version - b.version)[0].epoch)
      prune(channel, st)
      if (st.resyncing) return
    }
    let next = st.held.get(st.last + 1)
    while (next) {
      st.held.delete(next.version)
      deliver(channel, st, next)
      next = st.held.get(st.last + 1)
    }
    if (st.held.size === 0) stopGapTimer(st)
    else if (st.gapTimer === undefined) st.gapTimer = timers.set(() => void resync(channel), deps.gapTimeoutMs)
  }

  /**
   * Whether a snapshot belongs to another history than the topic's: another epoch with versions,
   * or an empty channel (version 0, no epoch) while the topic is in an epoch: a rebuild left the
   * channel without changes, and whatever the node holds of that epoch will never continue.
   */
  const isNewHistory = (st: ChannelState, snap: Snapshot) => snap.epoch !== st.epoch && (snap.version > 0 || snap.epoch === '')

  /** How many times a resync reads again a snapshot older than the topic before it gives up for a while. */
  const STALE_READS = 3

  /**
   * Re-reads the channel and restarts every subscriber from it: a version never arrived, or the
   * channel moved to another epoch. Nothing is delivered to the topic while the snapshot is read,
   * so the snapshot (read after the last delivery) is never older than what subscribers have; a
   * read that is older anyway (a lagging replica) is read again. Resolves when done; a call during
   * a running resync asks for one more afterwards (its reason may postdate the running read).
   */
  function resync(channel: string): Promise<void> {
    const st = channels.get(channel)
    if (!st) return Promise.resolve()
    if (st.resyncing || st.last === undefined) {
      // Running: one more afterwards. Not started yet (no first snapshot): once it has one, since
      // the reads in flight may predate what this resync is for (see init).
      st.again = true
      return st.resyncing ?? Promise.resolve()
    }
    stopGapTimer(st)
    // What the window holds was delivered: it goes out before the resync, in order.
    flushWindow(channel, st)
    let failed = false
    st.resyncing = (async () => {
      try {
        for (let attempt = 1; ; attempt++) {
          if (attempt > 20) throw new Error(`could not read a current snapshot of ${channel}`)
          const read = await readSnapshot(channel, st)
          if (channels.get(channel) !== st) return
          if (isStale(st, read)) continue
          const snap = read.snap
          const newHistory = isNewHistory(st, snap)
          if (newHistory) {
            // Read before an epoch change this node already moved past: read again.
            if (st.retired.has(snap.epoch)) continue
            // A new history (or the channel emptied by a rebuild): versions of the old epoch mean
            // nothing any more.
            if (st.epoch) st.retired.add(st.epoch)
            setEpoch(st, snap.epoch)
            st.last = snap.version
            st.held.clear()
          } else if (st.last !== undefined && snap.version < st.last) {
            if (attempt < STALE_READS) continue
            throw new Error(`snapshot of ${channel} at version ${snap.version} is older than the topic (${st.last})`)
          } else {
            st.last = snap.version
          }
          scheduleRollover(channel, st, snap)
          const text = frames.snapshot(channel, { ...snap, epoch: st.epoch ?? snap.epoch }, true)
          deps.publish(channel, text)
          // Joiners catching up get it too, unless they are ahead of it in its epoch (a resume
          // served from versions this node has not delivered yet): they wait for the topic.
          for (const j of st.joiners) {
            if (j.buffer === null && (newHistory || j.version <= snap.version) && sendTo(j, text)) j.version = snap.version
          }
          for (const j of [...st.joiners]) promoteIfCaughtUp(channel, st, j)
          return
        }
      } catch (err) {
        deps.onError?.(err, channel)
        failed = true
      } finally {
        st.resyncing = undefined
        if (channels.get(channel) === st) {
          prune(channel, st)
          drain(channel, st)
          if (failed) {
            st.again = false
            // Try again after the gap timeout, not at once: the database may be down.
            stopGapTimer(st)
            st.gapTimer = timers.set(() => void resync(channel), deps.gapTimeoutMs)
          } else if (st.again && !st.resyncing) {
            st.again = false
            void resync(channel)
          }
        }
      }
    })()
    return st.resyncing
  }

  function cleanup(channel: string) {
    const st = channels.get(channel)
    if (st && st.members.size === 0) {
      stopGapTimer(st)
      if (st.windowTimer !== undefined) timers.clear(st.windowTimer)
      if (st.rollover) timers.clear(st.rollover.timer)
      channels.delete(channel)
    }
  }

  /** Takes a socket off a channel (and out of any join in progress). False if it was not on it. */
  function leave(channel: string, sink: Sink): boolean {
    const st = channels.get(channel)
    if (!st || !st.members.delete(sink.id)) return false
    for (const j of st.joiners) if (j.sink.id === sink.id) (j.cancelled = true), st.joiners.delete(j)
    cleanup(channel)
    return true
  }

  /** Sorted, de-duplicated notices of the current epoch newer than `after`. */
  function merged(st: ChangeNotice[][], epoch: string | undefined, after: number): ChangeNotice[] {
    const byVersion = new Map<number, ChangeNotice>()
    for (const list of st) for (const n of list) if (n.epoch === epoch && n.version > after) byVersion.set(n.version, n)
    return [...byVersion.values()].sort((a, b) => a.version - b.version)
  }

  /** True if `list` (sorted) continues `from` without a hole and reaches at least `to`. */
  const joins = (list: ChangeNotice[], from: number, to: number) =>
    list.every((n, i) => n.version === from + i + 1) && (list.at(-1)?.version ?? from) >= to

  /**
   * The snapshot read shared by the subscribers joining one channel state at the same time: a
   * burst of subscribes or resumes (a stream going live, a node's clients reconnecting) costs one
   * read per channel, not one per subscriber. Tied to the state: a state made after the read began
   * (its last member left and a new one came) never takes it, since notices that arrived while no
   * state existed were dropped and may postdate the read. A joiner whose buffer does not continue a
   * shared read (it started before the joiner began buffering) reads afresh (see `join`).
   */
  function sharedSnapshot(channel: string, st: ChannelState): Promise<Read> {
    if (!st.read) {
      const read = readSnapshot(channel, st).finally(() => {
        if (st.read === read) st.read = undefined
      })
      st.read = read
    }
    return st.read
  }

  /**
   * History reads shared by the resumes of one channel state: resumes asking in the same turn of
   * the event loop (a reconnect storm) wait for the end of it and share one read, from the oldest
   * version any of them needs. A read is only shared by joiners that were buffering before it
   * began, so it and their buffers together hold every notice after their resume points that has
   * reached the shared history.
   */
  function sharedHistory(channel: string, st: ChannelState, after: number): Promise<ChangeNotice[]> {
    const pending = st.historyBatch
    if (pending) {
      pending.after = Math.min(pending.after, after)
      return pending.result
    }
    const batch = { after, result: undefined as unknown as Promise<ChangeNotice[]> }
    batch.result = new Promise<void>((start) => setImmediate(start)).then(() => {
      if (st.historyBatch === batch) st.historyBatch = undefined
      return deps.history!(channel, batch.after)
    })
    st.historyBatch = batch
    return batch.result
  }

  /**
   * Whether a client at version `since` of a channel with periods surely holds the current period.
   * A period ends by the clock, with no version: a client that read its snapshot before the end
   * and reconnected after it would resume into yesterday's standings and, told to skip updates of
   * another period, keep them until the next end. Its version was committed before the period
   * began, or in the moments after it, before the re-sync that moved every subscriber to it (see
   * scheduleRollover); a version committed later than that was delivered after that re-sync. So the
   * resume is served only when the history shows `since` committed PERIOD_SETTLED_MS or more into
   * the current period; otherwise (or when the history no longer has it, or at version 0) the
   * client gets a snapshot, which is always correct. Returns the history it read (from `since` on,
   * for the replay: read once), or undefined when the client needs a snapshot.
   */
  async function historyInPeriod(channel: string, st: ChannelState, since: number): Promise<ChangeNotice[] | undefined> {
    if (since <= 0 || !deps.history) return undefined
    const kept = await sharedHistory(channel, st, since - 1)
    const own = kept.find((n) => n.version === since && n.epoch === st.epoch)
    return own !== undefined && Date.parse(own.at) >= st.periodFrom! + PERIOD_SETTLED_MS ? kept : undefined
  }

  /**
   * Tries to continue a client from its resume point with the kept history. Returns true if the
   * client was served (or went away meanwhile), false if it needs a snapshot instead.
   */
  async function resume(channel: string, st: ChannelState, j: Joiner, from: ResumePoint): Promise<boolean> {
    if (!deps.history) return false
    if (st.last === undefined) {
      const { snap } = await sharedSnapshot(channel, st)
      if (gone(channel, st, j)) return true
      init(channel, st, snap)
    }
    // A board with periods: its history was read to check the client's period; the first attempt replays from it.
    let readForPeriod: ChangeNotice[] | undefined
    if (st.periodFrom !== undefined) {
      readForPeriod = await historyInPeriod(channel, st, from.since)
      if (gone(channel, st, j)) return true
      if (!readForPeriod) return false
    }
    // Version 0 is the empty channel, the same in every epoch.
    const sameEpoch = () => st.epoch !== undefined && (from.since === 0 || from.epoch === st.epoch)
    for (let attempt = 1; attempt <= 3; attempt++) {
      if (!sameEpoch() || st.last! - from.since > maxReplay) return false
      let replay: ChangeNotice[]
      if (from.since < st.last!) {
        const kept = attempt === 1 && readForPeriod ? readForPeriod : await sharedHistory(channel, st, from.since)
        if (gone(channel, st, j)) return true
        if (!sameEpoch()) return false
        replay = merged([kept, j.buffer!], st.epoch, from.since)
        // History starting after since+1 was trimmed by retention: a replay cannot be whole.
        if (replay.length > 0 && replay[0].version !== from.since + 1) return false
        // The history may hold versions past a hole this node is still waiting for (held
        // notices): replay the contiguous run only; the rest comes live, in order.
        const hole = replay.findIndex((n, i) => n.version !== from.since + i + 1)
        if (hole >= 0) replay = replay.slice(0, hole)
      } else {
        if (from.since > st.last!) {
          // The client saw versions this node has not yet: fine if they really exist.
          const read = await sharedSnapshot(channel, st)
          if (gone(channel, st, j)) return true
          const snap = read.snap
          if (isStale(st, read) || !sameEpoch() || snap.epoch !== st.epoch || snap.version < from.since) return false
        }
        replay = merged([j.buffer!], st.epoch, from.since)
      }
      if (!joins(replay, from.since, st.last!)) continue // notices still on their way: read again
      j.buffer = null
      if (!sendTo(j, frames.recovered(channel, from.since, st.epoch!))) return true
      j.version = from.since
      for (const n of replay) {
        if (!sendTo(j, frames.update(n))) return true
        j.version = n.version
      }
      promoteIfCaughtUp(channel, st, j)
      return true
    }
    return false
  }

  /**
   * Sends a snapshot and joins the live updates. `refused`: the resume point of a client whose
   * resume could not be served; its snapshot is marked `resync` and, in the same epoch, is never
   * older than that point when the point is real (a read that began before this join may be: the
   * join reads afresh once).
   */
  async function join(channel: string, st: ChannelState, j: Joiner, refused: ResumePoint | undefined) {
    for (let attempt = 1; ; attempt++) {
      if (attempt > 20) throw new Error(`could not read a snapshot of ${channel} that joins its live updates`)
      // A retry reads afresh: the shared read it would join may be the one that did not fit.
      const read = attempt === 1 ? await sharedSnapshot(channel, st) : await readSnapshot(channel, st)
      if (gone(channel, st, j)) return
      const snap = read.snap
      init(channel, st, snap)
      // Read before an epoch change this node already saw.
      if (st.retired.has(snap.epoch) || isStale(st, read)) continue
      // The empty state is in every epoch: a topic that started empty takes the epoch of the first
      // history it sees.
      if (st.epoch === '' && snap.epoch !== '') setEpoch(st, snap.epoch)
      let epoch = snap.epoch
      if (epoch !== st.epoch) {
        if (!isNewHistory(st, snap)) epoch = st.epoch! // version 0: the empty state of every epoch
        else {
          await resync(channel) // the node has not seen the new epoch yet: move to it first
          continue
        }
      }
      if (attempt === 1 && refused && refused.epoch === epoch && snap.version < refused.since) continue
      // While a resync reads, the topic waits for it: join after it, from the topic's new start.
      if (st.resyncing) {
        await st.resyncing
        continue
      }
      // The snapshot plus the buffer must reach what the topic has already had, without a hole.
      const buffered = merged([j.buffer!], st.epoch, snap.version)
      if (!joins(buffered, snap.version, st.last!)) continue // read before notices this node already published: read again
      j.buffer = null
      if (!sendTo(j, frames.snapshot(channel, { ...snap, epoch }, refused !== undefined))) return
      j.version = snap.version
      for (const n of buffered) {
        if (!sendTo(j, frames.update(n))) return
        j.version = n.version
      }
      promoteIfCaughtUp(channel, st, j)
      return
    }
  }

  return {
    /** Feeds one change notice from NATS. Notices for channels nobody here watches are ignored. */
    onNotice(notice: ChangeNotice) {
      const st = channels.get(notice.channel)
      // A late notice of a history this node left. Few channels ever retire an epoch: the size check
      // spares the usual notice a hash of its epoch.
      if (!st || (st.retired.size > 0 && st.retired.has(notice.epoch))) return
      if (st.last !== undefined && st.epoch !== '' && notice.epoch !== st.epoch) {
        void resync(notice.channel)
        return
      }
      if (st.last !== undefined && notice.version <= st.last) return // duplicate or already in a snapshot
      if (notice.version === st.last! + 1 && st.held.size === 0 && !st.resyncing && st.epoch !== '') {
        // The usual case, the next version with nothing held: what drain would do, without the map.
        deliver(notice.channel, st, notice)
        stopGapTimer(st)
        return
      }
      st.held.set(notice.version, notice)
      drain(notice.channel, st)
    },

    /**
     * The channel's history restarts in `epoch` at `version` (see ChangeRun.restart): its
     * subscribers re-sync from a snapshot, unless the topic has one showing it already.
     */
    onRestart(channel: string, version: number, epoch: string) {
      const st = channels.get(channel)
      if (!st || st.retired.has(epoch)) return
      if (st.last !== undefined && st.epoch === epoch && version <= st.last) return
      void resync(channel)
    },

    /**
     * Subscribes a socket. Without `from`: sends the snapshot, then every later update exactly
     * once, in order. With `from` (a reconnecting client): sends `subscribed` with `recovered:
     * true` and every update after `from.since`, if the epoch matches and the kept history has them
     * all; otherwise a snapshot with `resync: true`. Resolves once the first frames were sent (or
     * the subscription was cancelled meanwhile).
     */
    async subscribe(sink: Sink, channel: string, from?: ResumePoint): Promise<void> {
      const st = stateOf(channel)
      if (st.members.has(sink.id)) return
      st.members.add(sink.id)
      const joiner: Joiner = { sink, buffer: [], version: 0, cancelled: false }
      st.joiners.add(joiner)
      try {
        if (from) {
          let served = false
          try {
            served = await resume(channel, st, joiner, from)
          } catch (err) {
            deps.onError?.(err, channel) // history unreadable: a snapshot is always a correct answer
          }
          if (served || gone(channel, st, joiner)) return
        }
        await join(channel, st, joiner, from)
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
      if (!leave(channel, sink)) return false
      sink.unsubscribe(channel)
      return true
    },

    /** Forgets a closed socket on every channel it had. */
    removeSink(sink: Sink, subscribed: Iterable<string>) {
      for (const channel of subscribed) leave(channel, sink)
    },

    /** Ids of the sockets subscribed to a channel on this node. */
    members(channel: string): ReadonlySet<string> {
      return channels.get(channel)?.members ?? new Set()
    },

    /**
     * Re-syncs every channel this node serves, or those of one kind (each subscriber gets a
     * `resync` snapshot): the change feed of that kind may have lost notices (its stream was
     * recreated), and a lost notice that no later one reveals as a gap would otherwise go unnoticed.
     */
    resyncAll(kind?: ChannelKind): Promise<void> {
      const all = [...channels.keys()].filter((channel) => kind === undefined || parseChannel(channel)?.kind === kind)
      return Promise.all(all.map((channel) => resync(channel))).then(() => {})
    },

    /** Channels watched on this node, with their subscriber counts (for metrics and tests). */
    stats() {
      return [...channels].map(([channel, st]) => ({ channel, subscribers: st.members.size, version: st.last ?? null, epoch: st.epoch ?? null, held: st.held.size }))
    },

    stop() {
      for (const st of channels.values()) {
        stopGapTimer(st)
        if (st.windowTimer !== undefined) timers.clear(st.windowTimer)
        if (st.rollover) timers.clear(st.rollover.timer)
      }
      channels.clear()
    },
  }
}

export type ChannelHub = ReturnType<typeof createChannelHub>
