/**
 * Every failure the SDK reports. `code` is the server's machine-readable code where the server
 * refused something (`forbidden`, `invalid_event`, `publish_denied`, ...), or one of the SDK's own.
 * A publish fails with the server's code only when resending cannot help by itself: `rate_limited`,
 * `unavailable`, `overloaded`, `storage_full` are resent (same id) after a wait; `publish_denied`
 * (NATS denies the server the event's subject; not stored; an operator must act) is not.
 * The SDK's own codes:
 * - `outbox_full`: too many publishes wait to be sent (`outbox.max`); nothing was queued.
 * - `unconfirmed`: the event was sent, no answer came within the server's de-duplication window,
 *   and sending it again could store it twice: it may or may not be stored.
 * - `closed`: the client was closed (by `close()`, or for good by the server) before an answer.
 * - `gap`: a channel's frames did not follow each other (the SDK re-synced it; reported so that
 *   such a server bug is seen).
 * - `token_timeout`: the token function did not answer within `tokenTimeoutMs`; the SDK gave that
 *   call up (a late answer is ignored) and calls it again after the backoff.
 * - `token_refresh_failed`: the token function threw or rejected; retried after the backoff.
 */
export class FanfareError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly details?: unknown,
  ) {
    super(message)
    this.name = 'FanfareError'
  }
}
