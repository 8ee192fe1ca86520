import { MAX_TIMER_MS, retryAfter } from './backoff'
import { FanfareError } from './errors'
import type { ChannelSnapshots, ChannelUpdates, Kind, KindOf, ServerFrame } from './protocol'
import { helpers, kindOf, RESYNC, type StateHelper } from './state'

/** What a channel's state is, by channel name: `leaderboard:arena` holds a board. */
export type StateOf<C extends string> = ChannelSnapshots[KindOf<C>]
/** What a channel's updates carry, by channel name. */
export type UpdateOf<C extends string> = ChannelUpdates[KindOf<C>]

export type SubscribeOptions<C extends string> = {
  /**
   * The state changed: a snapshot (the first, or a `resync` that replaced what you had), an
   * update applied, or time passing (a poll's `closesAt`). `state` is always what the server would
   * snapshot now.
   */
  onState?: (state: StateOf<C>, info: { version: number; epoch: string; resync: boolean }) => void
  /** One update as the server sent it (versions `from`..`version`), after it was applied to the state. */
  onUpdate?: (data: UpdateOf<C>, info: { version: number; from: number; epoch: string }) => void
  /** The state was replaced by a fresh snapshot: what happened between was not seen update by update. */
  onResync?: (state: StateOf<C>) => void
  /** The subscription failed for good (forbidden, too many subscriptions), or a gap was seen and repaired. */
  onError?: (err: FanfareError) => void
}

export type SubscriptionStatus = 'pending' | 'live' | 'resyncing' | 'failed' | 'closed'

/** One `subscribe` call's handle. Several subscriptions to one channel share one server subscription. */
export type Subscription<C extends string = string> = {
  readonly channel: C
  /** The state as of now; undefined until the first snapshot. */
  readonly state: StateOf<C> | undefined
  readonly version: number
  readonly epoch: string
  /** `live` only while updates really arrive; `closed` once unsubscribed, or once the client closed (its state stays readable then). */
  readonly status: SubscriptionStatus
  /** Stops this subscription (the server subscription ends with the channel's last one). */
  unsubscribe(): void
}

/** A subscription's callbacks, as the registry calls them (whatever the channel's kind). */
type Listener = {
  onState?: (state: unknown, info: { version: number; epoch: string; resync: boolean }) => void
  onUpdate?: (data: unknown, info: { version: number; from: number; epoch: string }) => void
  onResync?: (state: unknown) => void
  onError?: (err: FanfareError) => void
}

/**
 * A channel this client follows: its state, version and epoch (kept across connections, so that
 * a reconnect resumes with since + epoch), and the listeners of its subscriptions.
 */
type Followed = {
  channel: string
  helper: StateHelper<unknown, unknown>
  state: unknown
  hasState: boolean
  version: number
  epoch: string
  /**
   * - subscribing: a subscribe is out, its snapshot or `subscribed` not yet in;
   * - live: updates apply;
   * - resyncing: the client asked for a fresh snapshot (unsubscribe, then subscribe); updates wait;
   * - waiting: a refused subscribe waits to be sent again (rate limit, server fault), or a channel
   *   the server reported a transient fault of waits to be re-subscribed;
   * - failed: refused for good.
   */
  phase: 'subscribing' | 'live' | 'resyncing' | 'waiting' | 'failed'
  listeners: Set<Listener>
  /**
   * Listeners added while the channel was not live (a reconnect, a re-sync under way) and not yet
   * given its state: a resume that recovers nothing sends no frame that would reach them.
   */
  owed: Set<Listener>
  /** The state held cannot be continued: the next subscribe asks for a snapshot, not a resume. */
  fresh: boolean
  /** The ref of the last subscribe or unsubscribe sent for it. */
  ref?: string
  /** When the subscribe or re-sync unsubscribe now awaiting its answer was sent; undefined when none awaits one. */
  askedAt?: number
  timer?: ReturnType<typeof setTimeout>
  retries: number
  /** Re-syncs since an update last applied: a server that keeps sending gaps is asked again after a backoff, not at once. */
  resyncs: number
}

/**
 * Refusals of a subscribe, and channel errors, that end it: asking again would get the same
 * answer. Any other code (`unavailable`, `rate_limited`, `internal`, ...) is a fault of the moment.
 */
const FATAL = new Set(['forbidden', 'unauthorized', 'invalid_frame', 'too_many_subscriptions', 'not_found'])

export type Channels = ReturnType<typeof createChannels>

/**
 * The channels a client follows, and how their frames become state. The rules of the protocol
 * are checked here, whatever the server does: an update that does not follow the version held
 * (a gap, or another epoch) re-syncs the channel instead of being applied.
 */
export function createChannels(deps: {
  send: (frame: object) => boolean
  now: () => number
  backoff: (attempt: number) => number
  /** A problem that is not one subscription's: reported on the client. */
  report: (err: FanfareError) => void
  /** The longest `retryAfterMs` followed as asked (the client's `maxServerWaitMs`), also once paced. */
  maxServerWaitMs: number
}) {
  const followed = new Map<string, Followed>()
  let refs = 0
  let online = false
  // The client closed for good: no subscription of it is live any more.
  let ended = false
  // When the next subscribe refused by a rate limit may go again: see `paced`.
  let nextRetryAt = 0

  const view = (f: Followed) => (f.helper.at && f.hasState ? f.helper.at(f.state, deps.now()) : f.state)

  const each = (f: Followed, call: (l: Listener) => void, listeners: Iterable<Listener> = f.listeners) => {
    for (const l of [...listeners]) {
      try {
        call(l)
      } catch (err) {
        // A listener's own bug must not stop the others, nor the channel.
        deps.report(new FanfareError('listener_error', `a listener of ${f.channel} threw: ${(err as Error)?.message ?? err}`))
      }
    }
  }

  /** Re-arms the timer of a state that changes with time alone (a poll closing at `closesAt`). */
  const arm = (f: Followed) => {
    if (f.timer !== undefined) clearTimeout(f.timer)
    f.timer = undefined
    const at = f.hasState && f.phase === 'live' ? f.helper.changesAt?.(view(f)) : undefined
    if (at === undefined) return
    const wait = Math.max(0, at - deps.now()) + 1
    f.timer = setTimeout(
      () => {
        f.timer = undefined
        // Cut to what a timer holds (a poll closing in more than ~24 days): nothing changed yet.
        // Given as is, the timer fired at once, and so on: onState every millisecond, for good.
        if (wait > MAX_TIMER_MS) return arm(f)
        const state = view(f)
        each(f, (l) => l.onState?.(state, { version: f.version, epoch: f.epoch, resync: false }))
        arm(f)
      },
      Math.min(wait, MAX_TIMER_MS),
    )
  }

  const subscribe = (f: Followed) => {
    if (!online) return
    f.phase = 'subscribing'
    f.ref = `s${++refs}`
    f.askedAt = deps.now()
    // Presence is state, not history: the server answers a resume with a snapshot anyway.
    const resume = f.hasState && !f.fresh ? { since: f.version, epoch: f.epoch } : {}
    deps.send({ op: 'subscribe', ref: f.ref, channel: f.channel, ...resume })
  }

  /**
   * Asks for a fresh snapshot: the state held cannot be continued exactly. It stays readable (it
   * is exact as of its version) until the snapshot replaces it.
   */
  const resync = (f: Followed) => {
    f.phase = 'resyncing'
    f.fresh = true
    f.askedAt = undefined
    if (f.timer !== undefined) clearTimeout(f.timer)
    f.timer = undefined
    if (!online) return
    const again = () => {
      f.timer = undefined
      if (!online || f.phase !== 'resyncing' || followed.get(f.channel) !== f) return
      f.ref = `u${++refs}`
      f.askedAt = deps.now()
      deps.send({ op: 'unsubscribe', ref: f.ref, channel: f.channel })
    }
    // The first re-sync goes at once; one that follows a snapshot without an update applied in
    // between waits a jittered backoff, which stops growing at 4x its minimum (1 s by default): a
    // busy board whose updates keep asking for snapshots (a player falling out of the shown top)
    // must not go stale for the reconnect backoff's 30 s.
    if (f.resyncs++ === 0) return again()
    f.timer = setTimeout(again, deps.backoff(Math.min(f.resyncs - 1, 2)))
  }

  const fail = (f: Followed, err: FanfareError) => {
    if (f.phase === 'failed') return
    f.phase = 'failed'
    f.askedAt = undefined
    if (f.timer !== undefined) clearTimeout(f.timer)
    // Subscribing again later starts over (permissions may have changed by then).
    if (followed.get(f.channel) === f) followed.delete(f.channel)
    each(f, (l) => l.onError?.(err))
  }

  /**
   * Sends the subscribe again after a wait: the server refused it for now, or reported a fault of
   * a channel it had subscribed (`resubscribe`: whether it still holds that subscription is not
   * known, so it is ended first: unsubscribe, then subscribe, resuming where the state is).
   */
  const retryLater = (f: Followed, wait: number, resubscribe: boolean) => {
    f.phase = 'waiting'
    f.askedAt = undefined
    if (f.timer !== undefined) clearTimeout(f.timer)
    f.timer = setTimeout(() => {
      f.timer = undefined
      if (!online || f.phase !== 'waiting' || followed.get(f.channel) !== f) return
      if (!resubscribe) return subscribe(f)
      // As a re-sync does, without dropping the state: the answer to this unsubscribe subscribes.
      f.phase = 'resyncing'
      f.ref = `u${++refs}`
      f.askedAt = deps.now()
      deps.send({ op: 'unsubscribe', ref: f.ref, channel: f.channel })
    }, wait)
  }

  /**
   * The wait before a subscribe refused by a rate limit goes again. The server's `retryAfterMs`
   * says when its budget holds one more subscribe: channels refused together (a reconnect of many
   * channels past the user's or address's budget) would all come back at that moment, all but one
   * be refused again, and soon weigh as abuse (a 4029 close, after which every channel subscribes
   * at once again, and so on for good). So the line starts at that wait and goes on one refill
   * apart (`1000 / perSecond` ms, the budget's rate the server gives with its refusal): the rate
   * the budget refills at. Not the wait itself: a budget part-way to its next token says "in 1 ms",
   * and 1 ms apart nearly every channel was refused again. A server that does not give the rate:
   * the wait, the most that one token takes.
   */
  const paced = (wait: number, perSecond: unknown) => {
    const now = deps.now()
    const at = Math.max(now + wait, nextRetryAt)
    const refill = typeof perSecond === 'number' && perSecond > 0 && Number.isFinite(perSecond) ? 1000 / perSecond : wait
    nextRetryAt = at + Math.min(refill, deps.maxServerWaitMs)
    // Paced or not, no channel waits longer than the longest wait the server may ask for.
    return Math.min(deps.maxServerWaitMs, at - now)
  }

  const onSnapshot = (f: Followed, frame: Extract<ServerFrame, { op: 'snapshot' }>) => {
    const replaced = f.hasState || f.fresh || frame.resync === true
    f.fresh = false
    f.state = frame.data
    f.hasState = true
    f.version = frame.version
    f.epoch = frame.epoch
    f.phase = 'live'
    f.askedAt = undefined
    f.retries = 0
    f.owed.clear()
    const state = view(f)
    each(f, (l) => l.onState?.(state, { version: f.version, epoch: f.epoch, resync: replaced }))
    if (replaced) each(f, (l) => l.onResync?.(state))
    arm(f)
  }

  const onUpdate = (f: Followed, frame: Extract<ServerFrame, { op: 'update' }>) => {
    if (f.phase !== 'live') return
    const from = frame.from ?? frame.version
    // Version 0 is the empty state of every epoch: the first update names the channel's epoch.
    const sameEpoch = frame.epoch === f.epoch || f.version === 0
    if (sameEpoch && frame.version <= f.version) return
    if (!sameEpoch || from !== f.version + 1) {
      deps.report(new FanfareError('gap', `${f.channel}: update ${frame.epoch}/${from}..${frame.version} does not follow ${f.epoch}/${f.version}; re-syncing`))
      return resync(f)
    }
    const next = f.helper.apply(f.state, frame.data, deps.now())
    if (next === RESYNC) return resync(f)
    f.state = next
    f.version = frame.version
    f.epoch = frame.epoch
    f.resyncs = 0
    f.owed.clear()
    const state = view(f)
    each(f, (l) => l.onUpdate?.(frame.data, { version: frame.version, from, epoch: frame.epoch }))
    each(f, (l) => l.onState?.(state, { version: f.version, epoch: f.epoch, resync: false }))
    arm(f)
  }

  return {
    /** Starts following a channel (or adds a listener to one followed). */
    add<C extends string>(channel: C, listener: SubscribeOptions<C>): Subscription<C> {
      const kind = kindOf(channel)
      if (kind === undefined) throw new FanfareError('invalid_channel', `${channel} is not a channel (leaderboard:, chat:, user:, stream:, poll:, reactions: or presence:)`)
      let f = followed.get(channel)
      if (!f) {
        f = { channel, helper: helpers[kind as Kind] as StateHelper<unknown, unknown>, state: undefined, hasState: false, version: 0, epoch: '', phase: 'subscribing', listeners: new Set(), owed: new Set(), fresh: false, retries: 0, resyncs: 0 }
        followed.set(channel, f)
        subscribe(f)
      } else if (f.hasState && f.phase === 'live') {
        // A late subscriber of a followed channel gets its state at once.
        const state = view(f)
        const { version, epoch } = f
        queueMicrotask(() => (listener as unknown as Listener).onState?.(state, { version, epoch, resync: false }))
      }
      const l = listener as unknown as Listener
      f.listeners.add(l)
      // Not live now: the state it has comes when the channel is live again (see `owed`).
      if (f.hasState && f.phase !== 'live') f.owed.add(l)
      const owner = f
      let closed = false
      return {
        channel,
        get state() {
          return owner.hasState && !closed ? (view(owner) as StateOf<C>) : undefined
        },
        get version() {
          return owner.version
        },
        get epoch() {
          return owner.epoch
        },
        get status(): SubscriptionStatus {
          if (closed || ended) return 'closed'
          return owner.phase === 'live' ? 'live' : owner.phase === 'failed' ? 'failed' : owner.phase === 'resyncing' ? 'resyncing' : 'pending'
        },
        unsubscribe() {
          if (closed) return
          closed = true
          owner.listeners.delete(l)
          owner.owed.delete(l)
          if (owner.listeners.size > 0 || followed.get(channel) !== owner) return
          followed.delete(channel)
          if (owner.timer !== undefined) clearTimeout(owner.timer)
          if (online && owner.phase !== 'failed') deps.send({ op: 'unsubscribe', ref: `x${++refs}`, channel })
        },
      }
    },

    /** A connection is ready: every followed channel subscribes again, resuming where it was. */
    online() {
      online = true
      for (const f of followed.values()) if (f.phase !== 'failed') subscribe(f)
    },

    offline() {
      online = false
      // The next connection subscribes every channel at once anyway: its refusals start a new line.
      nextRetryAt = 0
      for (const f of followed.values()) {
        f.askedAt = undefined
        if (f.phase === 'failed') continue
        if (f.timer !== undefined && (f.phase === 'waiting' || f.phase === 'resyncing')) clearTimeout(f.timer)
        f.phase = 'subscribing'
      }
    },

    /** Handles a frame about channels (errors: those answering its refs or naming a channel); false when it is not one. */
    handle(frame: ServerFrame): boolean {
      switch (frame.op) {
        case 'snapshot':
        case 'subscribed':
        case 'update': {
          const f = followed.get(frame.channel)
          if (!f || f.phase === 'failed') return true
          if (frame.op === 'snapshot') onSnapshot(f, frame)
          else if (frame.op === 'update') onUpdate(f, frame)
          else if (f.phase === 'subscribing') {
            // A resume answered for another history than the one asked for cannot be continued.
            if (f.version !== 0 && (frame.epoch !== f.epoch || frame.version !== f.version)) {
              deps.report(new FanfareError('gap', `${f.channel}: resumed at ${frame.epoch}/${frame.version}, not at ${f.epoch}/${f.version} as asked; re-syncing`))
              return resync(f), true
            }
            // Resumed: the missed updates follow.
            f.phase = 'live'
            f.askedAt = undefined
            f.retries = 0
            if (f.version === 0) f.epoch = frame.epoch
            // The missed updates (if any) will reach every listener; one added meanwhile gets the
            // state it resumed from now, or it would wait for the channel's next change.
            if (f.owed.size > 0) {
              const owed = [...f.owed]
              f.owed.clear()
              const state = view(f)
              each(f, (l) => l.onState?.(state, { version: f.version, epoch: f.epoch, resync: false }), owed)
            }
          }
          return true
        }
        case 'unsubscribed': {
          const f = followed.get(frame.channel)
          if (!f) return true
          if (frame.ref !== undefined && frame.ref === f.ref) f.askedAt = undefined
          if (frame.reason === 'forbidden') fail(f, new FanfareError('forbidden', `${frame.channel} may no longer be seen by this client`))
          // The answer to a re-sync's unsubscribe: the server no longer holds the channel, whatever
          // came meanwhile (a snapshot of its own re-sync, sent before it read the unsubscribe, made
          // the channel live again): subscribe, or it stays live with nothing more to come.
          else if (frame.ref !== undefined && frame.ref === f.ref && f.phase !== 'failed') subscribe(f)
          return true
        }
        case 'error': {
          const f = [...followed.values()].find((x) => (frame.ref !== undefined ? x.ref === frame.ref : x.channel === frame.channel))
          if (!f) return frame.channel !== undefined
          const { code, message, details } = frame.error
          if (code === 'already_subscribed') {
            // The socket holds a subscription of the channel already, from a point this client does
            // not know (updates are not applied while a subscribe is out): shown live on it, the
            // channel could hide a gap. Unless a snapshot or a resume answered meanwhile, it is ended
            // and subscribed again (resuming from the state held): at once the first time, after a
            // backoff if the server keeps answering so. Ignored, it stayed pending until the request
            // timeout replaced the connection.
            if (f.phase === 'subscribing') retryLater(f, f.retries++ === 0 ? 0 : deps.backoff(f.retries), true)
            return true
          }
          if (FATAL.has(code)) return fail(f, new FanfareError(code, message, details)), true
          // A fault of the moment (rate limit, server fault): ask again after the wait the server
          // gives, or a backoff. Without a ref it is about a subscription the server had: reported,
          // since the channel stops following until it is subscribed again.
          if (frame.ref === undefined) deps.report(new FanfareError(code, `${f.channel}: ${message}; subscribing again`, details))
          const wait = retryAfter(frame.error, deps.maxServerWaitMs) ?? deps.backoff(++f.retries)
          retryLater(f, code === 'rate_limited' ? paced(wait, (details as { perSecond?: unknown } | undefined)?.perSecond) : wait, frame.ref === undefined)
          return true
        }
        default:
          return false
      }
    },

    /** When the oldest subscribe or re-sync unsubscribe still unanswered was sent; undefined when none is. */
    oldestUnanswered(): number | undefined {
      let oldest: number | undefined
      for (const f of followed.values()) if (f.askedAt !== undefined && (oldest === undefined || f.askedAt < oldest)) oldest = f.askedAt
      return oldest
    },

    close() {
      online = false
      ended = true
      for (const f of followed.values()) if (f.timer !== undefined) clearTimeout(f.timer)
      followed.clear()
    },
  }
}
