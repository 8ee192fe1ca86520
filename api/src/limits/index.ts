import { hostname } from 'node:os'
import type { NatsConnection } from '@nats-io/transport-node'
import { ValidationError } from 'elysia'
import type { Config } from '../../../core/config'
import type { Logger } from '../../../core/logger'
import type { Metrics } from '../../../core/metrics'
import type { SubscriptionWatch } from '../../../core/nats-subscriptions'
import type { Principal } from '../auth/principal'
import { Forbidden, Invalid, KeyExpired, RateLimited, retryAfterSeconds, TokenExpired, Unauthorized } from '../errors'
import { createAuthFailures, type AuthFailures } from './auth-failures'
import { clientAddress, type ClientAddress } from './client-ip'
import { startLimitsCluster, type LimitsCluster } from './cluster'
import { createConnectionLimits, type ConnectionLimits } from './connections'
import { originPolicy, type OriginPolicy } from './origins'
import { createRateLimits, type RateLimits, type Standing } from './rates'

export type { ConnectionLimits, Slot, ConnectionRefusal } from './connections'
export type { RateLimits, ConnectionRates, RateRefusal } from './rates'
export type { AuthFailures } from './auth-failures'
export type { LimitsCluster } from './cluster'

/** Every limit of one API node, built from its config (see README "Limits"). */
export type Limits = {
  rates: RateLimits
  connections: ConnectionLimits
  /** Failed credential checks per client address (FANFARE_AUTH_FAILURES_PER_MINUTE). */
  authFailures: AuthFailures
  /** The client's address of a request (see FANFARE_TRUSTED_PROXIES). */
  clientAddress: ClientAddress
  origins: OriginPolicy
  /** Most channels one WebSocket may watch (also the burst of its subscribes). */
  maxSubscriptions: number
  /** How the node shares its counts with the others; absent when it does not (an app without NATS, tests). */
  cluster?: LimitsCluster
  stop(): void
}

/**
 * Limit counters started in this process: part of each one's node id, so that nodes started in one
 * process (tests) are told apart, while a process restarted in place (same host name and pid, as
 * in a container) is the same node again, as a new run.
 */
let started = 0

/** Most channels one WebSocket may watch. */
export const MAX_SUBSCRIPTIONS = 100

/**
 * The limits of an API node. With `share` (a connection to NATS), the per-user, per-key and
 * per-address counts are shared with the deployment's other nodes (see startLimitsCluster).
 */
export function createLimits(deps: {
  config: Config
  now?: () => number
  maxSubscriptions?: number
  metrics?: Metrics
  share?: { nc: NatsConnection; logger: Logger; subscriptions?: SubscriptionWatch; flushMs?: number; heartbeatMs?: number }
}): Limits {
  const maxSubscriptions = deps.maxSubscriptions ?? MAX_SUBSCRIPTIONS
  const share = deps.share !== undefined
  const rates = createRateLimits({ config: deps.config, maxSubscriptions, now: deps.now, onRefused: deps.metrics?.ingest.rateLimited, share })
  // `cluster` is read when a hold-off is set, after it started below.
  const connections = createConnectionLimits({ config: deps.config, now: deps.now, onRefused: deps.metrics?.ingest.rateLimited, share, onHoldOff: () => cluster?.holdOffSoon() })
  const authFailures = createAuthFailures({ config: deps.config, now: deps.now, onRefused: deps.metrics?.ingest.rateLimited, share })
  const cluster: LimitsCluster | undefined = deps.share
    ? startLimitsCluster({
        nc: deps.share.nc,
        prefix: deps.config.FANFARE_SUBJECT_PREFIX,
        node: `${hostname()}-${process.pid}-${++started}`,
        inc: crypto.randomUUID().slice(0, 8),
        connections: connections.shared,
        rates: rates.shared,
        authFailures: authFailures.shared,
        // A node is lost after the same silence as in presence.
        ttlMs: deps.config.FANFARE_PRESENCE_TTL_MS,
        heartbeatMs: deps.share.heartbeatMs,
        flushMs: deps.share.flushMs,
        logger: deps.share.logger,
        subscriptions: deps.share.subscriptions,
      })
    : undefined
  return {
    rates,
    connections,
    authFailures,
    clientAddress: clientAddress(deps.config.FANFARE_TRUSTED_PROXIES),
    origins: originPolicy(deps.config.FANFARE_ALLOWED_ORIGINS),
    maxSubscriptions,
    ...(cluster ? { cluster } : {}),
    stop() {
      void cluster?.stop()
      rates.stop()
      connections.stop()
      authFailures.stop()
    },
  }
}

/**
 * What a REST request costs its caller's budget: one per event it carries (a batch of 100 costs
 * what 100 single publishes cost, so batching buys fewer round trips, not more events), else one.
 */
export function requestCost(body: unknown): number {
  const events = (body as { events?: unknown } | null | undefined)?.events
  return Array.isArray(events) ? Math.max(1, events.length) : 1
}

/**
 * Charges a REST request to its caller (a user, a key, or anonymous callers at `address`) and
 * returns what it charged, and where the caller's budget stands after it (for rateLimitFields;
 * undefined without a budget). Throws RateLimited (429 with Retry-After; nothing was done), or
 * Invalid 422 `too_many_events` when the request carries more events than the caller's budget can
 * ever hold (charged one, as any request refused as a whole).
 */
export function chargeRequest(rates: RateLimits, p: Principal, body: unknown, address?: string): { cost: number; standing: Standing | undefined } {
  const cost = requestCost(body)
  const capacity = rates.capacityOf(p)
  if (cost > capacity) {
    // Refused as a whole: it costs one, as any refused request (else such requests were never 429).
    const refused = rates.charge(p, 1, address)
    if (refused) throw new RateLimited(refused.retryAfterMs, refused.message)
    throw new Invalid('too_many_events', `this caller may publish at most ${capacity} events per request (its burst)`, { max: capacity, got: cost })
  }
  const charged = rates.chargeStanding(p, cost, address)
  if (charged.refused) throw new RateLimited(charged.refused.retryAfterMs, charged.refused.message)
  return { cost, standing: charged.standing }
}

/**
 * The RateLimit-Policy and RateLimit fields of draft-ietf-httpapi-ratelimit-headers (structured
 * fields: quota `q`, window `w` in seconds; remaining `r`, seconds `t` until the budget is full) for
 * a caller's budget as it stands after its request was charged: a client sees its budget run down
 * before the first 429. Nothing for a request without a budget.
 */
export function rateLimitFields(s: Standing | undefined): Record<string, string> {
  if (!s) return {}
  return { 'ratelimit-policy': `"${s.name}";q=${s.burst};w=${s.windowS}`, ratelimit: `"${s.name}";r=${s.remaining};t=${s.fullInS}` }
}

/**
 * Whether a request that was charged and then failed with `error` was refused as a whole before
 * doing anything: invalid (422: the body's schema, or an event the ingest refused) or forbidden
 * (403). Such a batch stored nothing, so it costs what any refused request costs (one), not one
 * per event (see settleRefused).
 */
export function refusedAsAWhole(error: unknown): boolean {
  if (error instanceof Invalid || error instanceof Forbidden) return true
  return error instanceof ValidationError && error.type !== 'response'
}

/**
 * Gives back all but one of what a request refused as a whole was charged: a bad event in a batch
 * of 100 must not eat the budget of the caller's good ones. One stays charged, so refused requests
 * are still bounded by the same budget as any other (the body size limit bounds what each costs to read).
 */
export function settleRefused(rates: RateLimits, p: Principal, charged: number, address?: string): void {
  if (charged > 1) rates.refund(p, charged - 1, address)
}

/**
 * Checks a credential of a client at `address` (`check` parses and verifies it). Over the address's
 * budget of failures, throws RateLimited (429 with Retry-After) without calling `check`, so a flood
 * of guesses costs no key lookups. A 401 from `check` is charged to the address and rethrown; an
 * expired token or key is not (only a validly signed token, a real key, expires: it is no guess),
 * nor is a success.
 * Answers as `check` does: at once (returned or thrown) when it does, through a promise when it
 * returns one. Callers await either.
 */
export function checkCredential<T>(failures: AuthFailures, address: string, check: () => T | Promise<T>): T | Promise<T> {
  const refused = failures.admit(address)
  if (refused) throw new RateLimited(refused.retryAfterMs, refused.message)
  const failed = (err: unknown): never => {
    if (err instanceof Unauthorized && !(err instanceof TokenExpired) && !(err instanceof KeyExpired)) failures.failed(address)
    throw err
  }
  let result: T | Promise<T>
  try {
    result = check()
  } catch (err) {
    return failed(err)
  }
  return result instanceof Promise ? result.catch(failed) : result
}

/**
 * Refuses a WebSocket upgrade over a limit, before the upgrade: 429 with `Retry-After` and the
 * one error body of the API (`details.retryAfterMs`). For Elysia's `beforeHandle`: return its value.
 */
export function refuseUpgrade(set: { status?: number | string; headers: Record<string, string | number> }, r: { code: string; message: string; retryAfterMs: number }) {
  set.status = 429
  set.headers['retry-after'] = retryAfterSeconds(r.retryAfterMs)
  return { error: { code: r.code, message: r.message, details: { retryAfterMs: r.retryAfterMs } } }
}

/** The reason of a 4029 close: the code and the delay to wait before reconnecting, e.g. `rate_limited: reconnect after 5000 ms`. */
export const closeReasonOf = (r: { code: string; retryAfterMs: number }) => `${r.code}: reconnect after ${Math.ceil(r.retryAfterMs)} ms`
