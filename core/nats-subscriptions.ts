import { PermissionViolationError, type Msg, type NatsConnection, type Subscription } from '@nats-io/transport-node'
import type { Logger } from './logger'

/** A subscription NATS refuses this process's user now (see SubscriptionWatch). */
export type DeniedSubscription = {
  /** What the subscription is for (`revocations`, `rooms`, ...): a metric label, never a channel. */
  name: string
  subject: string
  /** Since when (ISO time). */
  since: string
  /** Whether the process may serve without it (see WatchOptions.essential). */
  essential: boolean
}

export type WatchOptions = {
  /** What the subscription is for; the label of `fanfare_nats_subscriptions_denied`. */
  name: string
  /**
   * Whether the node may not serve without it (default true): an essential subscription denied
   * makes readiness false. A non-essential one has a fallback (its denial is logged and counted).
   */
  essential?: boolean
  onMessage: (m: Msg) => void
  /** Called when NATS denies the subscription (once until it is let through again): the owner may fall back on polling. */
  onDenied?: () => void
  /**
   * Called once NATS lets the subscription through again after denying it: what was published on
   * the subject meanwhile was lost, so the owner catches up from where the truth is kept.
   */
  onRestored?: () => void
}

/** A core NATS subscription made through a SubscriptionWatch. */
export type WatchedSubscription = { unsubscribe: () => void }

/**
 * A process's core NATS subscriptions, watched for permissions taken away while it runs. An
 * operator narrowing the user's permissions (a nats-server config reload) makes nats-server end
 * every subscription the user may no longer make, saying so only in an asynchronous error: the
 * subscription's callback gets a PermissionViolationError and nats.js closes it, so its messages
 * stop without a word (an API node would then miss other nodes' revocations: a revoked key would
 * keep working on it). Through the watch, a denied subscription is logged as an error naming the
 * subject, listed by `denied()` (readiness, the metric), and made again every `retryMs` until
 * NATS lets it through; then `onRestored` runs.
 */
export type SubscriptionWatch = {
  subscribe: (subject: string, opts: WatchOptions) => WatchedSubscription
  /** Subscriptions NATS refuses now. */
  denied: () => DeniedSubscription[]
  /** Ends every subscription and retry. */
  stop: () => void
}

type Entry = WatchOptions & { subject: string; sub?: Subscription; deniedSince?: number; timer?: ReturnType<typeof setTimeout>; closed: boolean }

export function createSubscriptionWatch(deps: { nc: NatsConnection; logger: Logger; retryMs?: number; now?: () => number }): SubscriptionWatch {
  const now = deps.now ?? Date.now
  const retryMs = deps.retryMs ?? 2_000
  const log = deps.logger.child({ component: 'nats-subscriptions' })
  const entries = new Set<Entry>()

  const open = (e: Entry) => {
    e.sub = deps.nc.subscribe(e.subject, {
      callback: (err, m) => {
        if (e.closed) return
        if (err instanceof PermissionViolationError) return onDenied(e)
        if (err) return void log.warn({ err, subject: e.subject, subscription: e.name }, 'subscription failed')
        e.onMessage(m)
      },
    })
  }

  const onDenied = (e: Entry) => {
    if (e.deniedSince === undefined) {
      e.deniedSince = now()
      log.error(
        { subject: e.subject, subscription: e.name, essential: e.essential !== false },
        `NATS denies this process subscribe on ${e.subject} (Permissions Violation): ${e.essential !== false ? 'this node is not ready until it is granted again' : 'its fallback takes over'}; ` +
          `grant the user in NATS_URL subscribe on it in the nats-server config (retrying every ${retryMs} ms)`,
      )
      e.onDenied?.()
    }
    clearTimeout(e.timer)
    e.timer = setTimeout(() => void retry(e), retryMs)
  }

  /**
   * Subscribes again (unless a subscription is still open: one made while NATS was away) and
   * flushes: nats-server answers a SUB in order, so a refusal arrives before the flush's PONG, and
   * a subscription still open after it was let through.
   */
  const retry = async (e: Entry) => {
    if (e.closed) return
    if (!e.sub || e.sub.isClosed()) open(e)
    try {
      await deps.nc.flush()
    } catch {
      // NATS away: look again later (nats.js makes the subscription again on reconnect).
      if (!e.closed && e.sub && !e.sub.isClosed()) e.timer = setTimeout(() => void retry(e), retryMs)
      return
    }
    if (e.closed || !e.sub || e.sub.isClosed() || e.deniedSince === undefined) return
    log.info({ subject: e.subject, subscription: e.name, deniedMs: now() - e.deniedSince }, `NATS lets this process subscribe on ${e.subject} again`)
    e.deniedSince = undefined
    e.onRestored?.()
  }

  return {
    subscribe: (subject, opts) => {
      const e: Entry = { ...opts, subject, closed: false }
      entries.add(e)
      open(e)
      return {
        unsubscribe: () => {
          e.closed = true
          entries.delete(e)
          clearTimeout(e.timer)
          if (e.sub && !e.sub.isClosed()) e.sub.unsubscribe()
        },
      }
    },
    denied: () =>
      [...entries]
        .filter((e) => e.deniedSince !== undefined)
        .map((e) => ({ name: e.name, subject: e.subject, since: new Date(e.deniedSince!).toISOString(), essential: e.essential !== false })),
    stop: () => {
      for (const e of [...entries]) {
        e.closed = true
        clearTimeout(e.timer)
        if (e.sub && !e.sub.isClosed()) e.sub.unsubscribe()
      }
      entries.clear()
    },
  }
}

/**
 * What a denied publish was for, by its subject (`<prefix>.<area>.…`): `ev` (events), `changes`,
 * `control` (revocations, room changes), `presence`, `admin`, else `other`. A bounded metric label.
 */
export function publishAreaOf(prefix: string, subject: string): string {
  if (!subject.startsWith(`${prefix}.`)) return 'other'
  const area = subject.slice(prefix.length + 1).split('.')[0]
  return ['ev', 'changes', 'control', 'presence', 'admin'].includes(area) ? area : 'other'
}

/**
 * Says so when NATS denies one of this process's publishes (permissions narrowed by a config
 * reload while it runs): nats-server drops the message and tells the connection only in an
 * asynchronous error, which nothing else reads for core NATS publishes (a revocation broadcast,
 * presence heartbeats: other nodes would silently stop hearing from this one). Logged as an error
 * naming the subject (at most once per subject every `logEveryMs`) and counted by area. JetStream
 * publishes are refused to their callers as well (see AckedPublisher: 503 `publish_denied`).
 */
export function watchPublishDenials(deps: { nc: NatsConnection; prefix: string; logger: Logger; count: (area: string) => void; logEveryMs?: number; now?: () => number }): { stop: () => void } {
  const now = deps.now ?? Date.now
  const log = deps.logger.child({ component: 'nats-publish' })
  const logged = new Map<string, number>()
  let stopped = false
  void (async () => {
    for await (const s of deps.nc.status()) {
      if (stopped) return
      if (s.type !== 'error' || !(s.error instanceof PermissionViolationError) || s.error.operation !== 'publish') continue
      const subject = s.error.subject
      deps.count(publishAreaOf(deps.prefix, subject))
      const last = logged.get(subject)
      if (last !== undefined && now() - last < (deps.logEveryMs ?? 10_000)) continue
      if (logged.size > 1000) logged.clear()
      logged.set(subject, now())
      log.error({ subject }, `NATS denies this process publish on ${subject} (Permissions Violation): the message was dropped; grant the user in NATS_URL publish on it in the nats-server config`)
    }
  })().catch(() => {})
  return {
    stop: () => {
      stopped = true
    },
  }
}
