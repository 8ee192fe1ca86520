/**
 * WebSocket close codes Fanfare uses, and what a client should do on each. Terminal codes must not
 * be retried with the same credential; retryable ones reconnect (to any node) and resume.
 */
export const CLOSE = {
  /** RFC 6455 "going away": the node is shutting down. Reconnect at once, elsewhere; resume. */
  GOING_AWAY: 1001,
  /** RFC 6455 "try again later": a credential could not be checked now (its issuer's key set unreachable, the database away). Reconnect after a backoff, with the same credential. */
  TRY_AGAIN_LATER: 1013,
  /** The user token expired (or authentication never came). Get a fresh token, reconnect, resume. */
  TOKEN_EXPIRED: 4001,
  /** The credential is invalid or was revoked, or it tried what it may not. Terminal: do not retry with it. */
  FORBIDDEN: 4003,
  /** The client fell too far behind. Reconnect and resume. */
  SLOW_CONSUMER: 4008,
  /** Not heard from (no frame, no pong to the server's pings) within FANFARE_WS_IDLE_TIMEOUT_S: its network is probably gone. Reconnect (with the usual backoff: the network may still be failing) and resume. */
  NO_PONG: 4012,
  /** Sustained abuse of the rate limits, or past a connection limit (too many sockets of a user). Reconnect after the delay the reason gives. */
  RATE_LIMITED: 4029,
} as const
