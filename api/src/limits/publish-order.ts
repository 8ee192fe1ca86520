import type { RateRefusal } from './rates'

/**
 * How long past its retry time a hold lasts when the refused event is never sent again (a client
 * that gave up on it): then later events may go.
 */
export const HOLD_GRACE_MS = 10_000

/**
 * Why a connection's publishes wait: one refused for its rate, or one answered 503 (`overloaded`,
 * `unavailable`, ...: not stored, or not confirmed stored), which the client sends again as well.
 */
export type HoldRefusal = RateRefusal | { code: string; message: string; retryAfterMs: number }

/**
 * A connection's publishes wait behind this refused event (see heldBack). `n`: the place of its
 * publish frame among the connection's, so that a 503 answered late never moves the hold past an
 * earlier refused event.
 */
export type PublishHold = { id: string | undefined; n: number; retryAt: number; refusal: HoldRefusal }

/**
 * Keeps a connection's events in order through its rate limits and 503s. Once a publish is refused
 * for its rate, or answered 503 (this node's queue full, NATS away), the connection's later
 * publishes are refused too (without being charged) until the refused event is sent again: a
 * client pipelines its events, and the ones it sent before it heard of the refusal could otherwise
 * be stored before the refused one, however late the server reads them (tokens come back between
 * frames, the queue drains). The refused event itself may be sent again at `retryAt`.
 * An event without an id cannot be sent again as itself: its hold ends at `retryAt`; one that is
 * never resent, HOLD_GRACE_MS later.
 *
 * Returns the refusal for an event that must wait (its `retryAfterMs` until `retryAt`), or
 * undefined when it may be charged and published.
 */
export function heldBack(hold: PublishHold | undefined, id: string | undefined, now: number): HoldRefusal | undefined {
  if (!hold) return undefined
  if (now >= hold.retryAt + (hold.id === undefined ? 0 : HOLD_GRACE_MS)) return undefined
  if (id !== undefined && id === hold.id) return undefined
  const why = hold.refusal.code === 'rate_limited' ? 'for its rate' : `(${hold.refusal.code})`
  return {
    ...hold.refusal,
    message: `an earlier event of this connection (${hold.id ?? 'without an id'}) was refused ${why}: it goes first, send it again (${hold.refusal.message})`,
    retryAfterMs: Math.max(1, Math.ceil(hold.retryAt - now)),
  }
}

/**
 * The hold after the publish frame `n` was answered 503: behind it, unless the connection already
 * waits behind an earlier frame (503s of pipelined frames may be answered in any order). Not
 * behind `publish_denied`: that event is not sent again until an operator acts (the SDK gives it
 * up), and the connection's other events would wait behind it for nothing.
 */
export function holdAfterUnavailable(
  hold: PublishHold | undefined,
  refused: Omit<PublishHold, 'refusal'>,
  error: { code: string; message: string; retryAfterMs: number },
): PublishHold | undefined {
  if (error.code === 'publish_denied') return hold
  if (hold && hold.n <= refused.n) return hold
  return { ...refused, refusal: { code: error.code, message: error.message, retryAfterMs: error.retryAfterMs } }
}
