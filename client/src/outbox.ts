import { MAX_TIMER_MS, retryAfter } from './backoff'
import { FanfareError } from './errors'
import type { PublishedEvent, ServerFrame } from './protocol'

/** The server's answer to a stored event: its id, the stream sequence, and whether it was a resend. */
export type Ack = { id: string; seq: number; duplicate: boolean }

type Entry = {
  /** Publish order: sends and resends go lowest first. */
  n: number
  event: PublishedEvent & { id: string }
  resolve: (ack: Ack) => void
  reject: (err: FanfareError) => void
  /** When a send whose outcome is unknown (no answer before the connection dropped, a 503) went out. */
  maybeStoredAt?: number
  /** Internal errors answered for this event: it is given up after a few. */
  internalErrors: number
  sentAt: number
}

/**
 * Errors after which the event is certainly not stored and may be sent again. `database_unavailable`:
 * the server could not read what it checks before publishing (a room's visibility) from Postgres.
 */
const RETRY_AFTER_WAIT = new Set(['rate_limited', 'database_unavailable'])
/** Errors after which the event may or may not be stored: sent again (same id) after a backoff. */
const RETRY_UNKNOWN = new Set(['unavailable', 'overloaded', 'storage_full', 'internal'])
// Any other code fails the publish at once. `publish_denied` among them: NATS denies the server the
// event's subject (an operator narrowed its permissions), the event was not stored, and resending
// would be refused until an operator acts; the application may resend it (same id) later.

const MAX_INTERNAL_ERRORS = 5

export type Outbox = ReturnType<typeof createOutbox>

/**
 * Publishes waiting for their acks. Each event keeps the id it was given once, so sending it again
 * (after a lost connection, a 503, a rate limit) is de-duplicated by the server. Order is kept:
 * events go out lowest first, and after a refusal everything waits and then goes one at a time
 * (the window grows back by one per ack), refused events first. Events already in flight behind a
 * rate-limited one are refused by the server too until it is sent again (see the server's
 * publish-order.ts), so a refused event is never overtaken. An event whose outcome is unknown is resent only within the server's
 * de-duplication window; past it (connected or not), its promise fails with `unconfirmed` rather than risk a double.
 */
export function createOutbox(deps: {
  /** Most events waiting (queued and in flight); a publish past it fails with `outbox_full`. */
  max: number
  /** Most events in flight at once when nothing was refused. */
  window: number
  send: (frame: { op: 'publish'; ref: string; event: PublishedEvent }) => void
  now: () => number
  /** How long the server recognises a resent id (from `authed`, or the default). */
  dedupWindowMs: () => number
  /** The wait before resending after the `failures`-th failure in a row. */
  backoff: (failures: number) => number
  /** The longest `retryAfterMs` followed as asked (the client's `maxServerWaitMs`). */
  maxServerWaitMs: number
}) {
  const queued: Entry[] = []
  const inFlight = new Map<string, Entry>()
  let window = deps.window
  let pausedUntil = 0
  let failures = 0
  let online = false
  let timer: ReturnType<typeof setTimeout> | undefined
  // Fires when the first event in doubt may no longer be resent; see `sweep`.
  let doubtTimer: ReturnType<typeof setTimeout> | undefined
  let published = 0
  let refs = 0

  const requeue = (e: Entry) => {
    const at = queued.findIndex((q) => q.n > e.n)
    queued.splice(at < 0 ? queued.length : at, 0, e)
  }
  const schedule = (ms: number) => {
    if (timer !== undefined) clearTimeout(timer)
    timer = setTimeout(() => {
      timer = undefined
      pump()
    }, Math.min(ms, MAX_TIMER_MS))
  }
  /** Until when a resend is safe: while the server still remembers the id, with a margin for clocks and transit. */
  const safeUntil = (e: Entry) => {
    if (e.maybeStoredAt === undefined) return Infinity
    const windowMs = deps.dedupWindowMs()
    return e.maybeStoredAt + windowMs - Math.min(10_000, windowMs / 10)
  }
  const stillSafe = (e: Entry, now: number) => now < safeUntil(e)
  const unconfirmed = (e: Entry) =>
    e.reject(
      new FanfareError(
        'unconfirmed',
        `event ${e.event.id} was sent but not acknowledged within the server's de-duplication window: it may or may not be stored, and sending it again could store it twice`,
      ),
    )

  /**
   * Fails the waiting events in doubt that may no longer be resent, online or not, and arms itself
   * for the next: checked only when an event's turn to be sent came, one in doubt waited for a
   * connection (or behind a refusal) as long as that took, for good if none came.
   */
  function sweep() {
    if (doubtTimer !== undefined) clearTimeout(doubtTimer)
    doubtTimer = undefined
    const now = deps.now()
    let next = Infinity
    for (const e of [...queued]) {
      const until = safeUntil(e)
      if (until === Infinity) continue
      if (now < until) {
        next = Math.min(next, until)
        continue
      }
      queued.splice(queued.indexOf(e), 1)
      unconfirmed(e)
    }
    if (next !== Infinity) doubtTimer = setTimeout(sweep, Math.min(MAX_TIMER_MS, next - now))
  }

  function pump() {
    if (!online) return
    const now = deps.now()
    if (now < pausedUntil) return schedule(pausedUntil - now)
    while (inFlight.size < window && queued.length > 0) {
      const e = queued.shift()!
      if (!stillSafe(e, now)) {
        unconfirmed(e)
        continue
      }
      const ref = `p${++refs}`
      e.sentAt = now
      inFlight.set(ref, e)
      deps.send({ op: 'publish', ref, event: e.event })
    }
  }

  return {
    /** Queues an event (its `id` set), resolving with the ack; rejects at once when the outbox is full. */
    publish(event: PublishedEvent & { id: string }): Promise<Ack> {
      if (queued.length + inFlight.size >= deps.max) {
        return Promise.reject(new FanfareError('outbox_full', `${deps.max} events already wait to be sent; wait for some acks (or raise outbox.max)`))
      }
      return new Promise<Ack>((resolve, reject) => {
        queued.push({ n: ++published, event, resolve, reject, internalErrors: 0, sentAt: 0 })
        pump()
      })
    },

    /** The connection is ready (authenticated): sends what waits. */
    online() {
      online = true
      pump()
    },

    /**
     * The connection is gone: what was in flight may or may not be stored, and waits to be sent
     * again on the next connection (same ids).
     */
    offline() {
      online = false
      if (timer !== undefined) clearTimeout(timer)
      timer = undefined
      for (const e of inFlight.values()) {
        e.maybeStoredAt ??= e.sentAt
        requeue(e)
      }
      inFlight.clear()
      // A clean start on the next connection: its limits are fresh.
      window = Math.max(1, Math.min(window, deps.window))
      sweep()
    },

    /** Handles an `ack` or `error` frame; false when its ref is not a publish of this outbox. */
    answer(frame: Extract<ServerFrame, { op: 'ack' } | { op: 'error' }>): boolean {
      const e = frame.ref === undefined ? undefined : inFlight.get(frame.ref)
      if (!e) return false
      inFlight.delete(frame.ref!)
      if (frame.op === 'ack') {
        failures = 0
        window = Math.min(deps.window, window + 1)
        e.resolve({ id: frame.id, seq: frame.seq, duplicate: frame.duplicate })
        pump()
        return true
      }
      const { code, message, details } = frame.error
      if (RETRY_AFTER_WAIT.has(code)) {
        const wait = retryAfter(frame.error, deps.maxServerWaitMs) ?? deps.backoff(++failures)
        requeue(e)
        window = 1
        pausedUntil = Math.max(pausedUntil, deps.now() + wait)
      } else if (RETRY_UNKNOWN.has(code) && (code !== 'internal' || ++e.internalErrors < MAX_INTERNAL_ERRORS)) {
        e.maybeStoredAt ??= e.sentAt
        requeue(e)
        window = 1
        pausedUntil = Math.max(pausedUntil, deps.now() + deps.backoff(++failures))
        sweep()
      } else {
        e.reject(new FanfareError(code, message, details))
      }
      pump()
      return true
    },

    /** Fails every waiting publish (the client closed). */
    close(err: FanfareError) {
      online = false
      if (timer !== undefined) clearTimeout(timer)
      if (doubtTimer !== undefined) clearTimeout(doubtTimer)
      for (const e of [...inFlight.values(), ...queued]) e.reject(err)
      inFlight.clear()
      queued.length = 0
    },

    /** When the oldest event in flight (sent, its answer not yet in) was sent; undefined when none is. */
    oldestUnanswered(): number | undefined {
      let oldest: number | undefined
      for (const e of inFlight.values()) if (oldest === undefined || e.sentAt < oldest) oldest = e.sentAt
      return oldest
    },

    /** Events waiting: queued and in flight. */
    get size() {
      return queued.length + inFlight.size
    },
  }
}
