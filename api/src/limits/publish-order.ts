import type { RateRefusal } from './rates'

/**
 * How long past its retry time a hold lasts when the refused event is never sent again (a client
 * that gave up on it): then later events may go.
 */
export const HOLD_GRACE_MS = 10_000

/** A connection's publishes wait behind this refused event (see holdBack). */
export type PublishHold = { id: string | undefined; retryAt: number; refusal: RateRefusal }

/**
 * Keeps a connection's events in order through its rate limits. Once a publish is refused for its
 * rate, the connection's later publishes are refused too (without being charged) until the refused
 * event is sent again: a client pipelines its events, and the ones it sent before it heard of the
 * refusal could otherwise be stored before the refused one, however late the server reads them
 * (tokens come back between frames). The refused event itself may be sent again at `retryAt`.
 * An event without an id cannot be sent again as itself: its hold ends at `retryAt`; one that is
 * never resent, HOLD_GRACE_MS later.
 *
 * Returns the refusal for an event that must wait (its `retryAfterMs` until `retryAt`), or
 * undefined when it may be charged and published.
 */
export function heldBack(hold: PublishHold | undefined, id: string | undefined, now: number): RateRefusal | undefined {
  if (!hold) return undefined
  if (now >= hold.retryAt + (hold.id === undefined ? 0 : HOLD_GRACE_MS)) return undefined
  if (id !== undefined && id === hold.id) return undefined
  return {
    ...hold.refusal,
    message: `an earlier event of this connection (${hold.id ?? 'without an id'}) was refused for its rate: it goes first, send it again (${hold.refusal.message})`,
    retryAfterMs: Math.max(1, Math.ceil(hold.retryAt - now)),
  }
}
