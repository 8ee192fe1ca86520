import { jetstreamManager } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import { sql } from 'drizzle-orm'
import type { Db } from '../../../../core/db/client'
import type { DeniedSubscription } from '../../../../core/nats-subscriptions'
import type { FeedStatus } from '../../realtime/change-feed'

/**
 * This node's NATS connection: `ok` (a round trip answered), `closed`, `disconnected` (the client
 * is reconnecting), `silent` (connected, yet the round trip went unanswered: a stalled path).
 */
export type NatsState = 'ok' | 'closed' | 'disconnected' | 'silent'

/** One check of what the node depends on. `postgresRead`: only on a node with a read replica (DATABASE_READ_URL). */
export type Checked = {
  postgres: boolean
  postgresRead?: boolean
  nats: NatsState
  /** Why the event stream's info did not come (absent when it did). */
  jetstreamError?: string
}

/** Resolves the error's message when `p` rejects or takes longer than `ms`, undefined when it resolves in time. */
async function within(ms: number, p: () => Promise<unknown>): Promise<string | undefined> {
  let timer: ReturnType<typeof setTimeout> | undefined
  const timeout = new Promise<string>((resolve) => (timer = setTimeout(() => resolve(`no answer within ${ms} ms`), ms)))
  try {
    return await Promise.race([p().then(() => undefined, (err: unknown) => (err as Error)?.message ?? String(err)), timeout])
  } finally {
    clearTimeout(timer)
  }
}

/**
 * One check: Postgres (and its read replica, when it has one) answers `select 1`, this node's NATS
 * connection answers a round trip, and JetStream answers the event stream's info naming a leader
 * (on a cluster), each within `timeoutMs`. The stream's info is asked only over a connection that
 * answered.
 */
export async function checkReadiness(db: Db, nc: NatsConnection, eventStream: string, timeoutMs = 2000, readDb?: Db): Promise<Checked> {
  const [postgres, natsAndStream, postgresRead] = await Promise.all([
    within(timeoutMs, () => db.execute(sql`select 1`)),
    (async (): Promise<Pick<Checked, 'nats' | 'jetstreamError'>> => {
      if (nc.isClosed()) return { nats: 'closed' }
      const rtt = await within(timeoutMs, () => nc.rtt())
      // rtt() refuses at once while the client reconnects; a timeout is a connection that carries nothing.
      if (rtt !== undefined) return { nats: nc.isClosed() ? 'closed' : /disconnected/i.test(rtt) ? 'disconnected' : 'silent' }
      const jetstreamError = await within(timeoutMs, async () => {
        const jsm = await jetstreamManager(nc, { timeout: timeoutMs })
        const info = await jsm.streams.info(eventStream)
        // A replica whose group lost its leader answers from its own copy after a while (nats-server
        // 2.9 does so to help an operator), which is no sign that the stream takes writes.
        if (info.cluster && !info.cluster.leader) throw new Error('the event stream has no leader')
      })
      return { nats: 'ok', ...(jetstreamError !== undefined ? { jetstreamError } : {}) }
    })(),
    readDb ? within(timeoutMs, () => readDb.execute(sql`select 1`)) : undefined,
  ])
  return { postgres: postgres === undefined, nats: natsAndStream.nats, ...(natsAndStream.jetstreamError !== undefined ? { jetstreamError: natsAndStream.jetstreamError } : {}), ...(readDb ? { postgresRead: postgresRead === undefined } : {}) }
}

/** What /readyz answers: 200 `ready` or `degraded`, or 503 `not_ready` with a message. */
export type Verdict =
  | { status: 'ready' | 'degraded'; body: Record<string, unknown> }
  | { status: 'not_ready'; message: string; details: Record<string, unknown> }

/** A feed refused by NATS permissions is this node's configuration, not an outage that passes. */
const refused = (f: FeedStatus) => /permission/i.test(f.reason ?? '')

export type ReadinessOptions = {
  /** How long a JetStream outage (the event stream or a change feed not answering) is tolerated (FANFARE_READY_GRACE_S). */
  graceMs: number
  /** How long this node's own connection may be reconnecting (a server died; it moves to another within a second). */
  reconnectGraceMs: number
}

/**
 * Readiness over time. What fails on every node alike while a NATS cluster elects a stream leader
 * (the event stream's info, change feeds that cannot follow) must not take every node out at once:
 * it is tolerated for `graceMs` (200 `degraded`, saying what is not answering since when), then the
 * node is not ready (a node cut off for good, e.g. on a partitioned minority server, leaves). What
 * is this node's own is not ready at once: Postgres or its replica not answering, a closed or
 * silent NATS connection, one reconnecting for longer than `reconnectGraceMs`, NATS denying an
 * essential subscription or a change feed's consumer. A node that has never been ready gets no
 * grace: a balancer must not add a node that never served.
 */
export function createReadiness(opts: ReadinessOptions) {
  let everReady = false
  let outageSince: number | undefined
  let disconnectedSince: number | undefined

  return (
    c: Checked,
    feeds: FeedStatus[] | undefined,
    denied: Pick<DeniedSubscription, 'subject' | 'name' | 'since'>[],
    now = Date.now(),
  ): Verdict => {
    const notFollowing = (feeds ?? []).filter((f) => !f.following)
    const lagging = notFollowing.map(({ stream, reason, since }) => ({ stream, reason, ...(since ? { since } : {}) }))
    const base = {
      postgres: c.postgres,
      nats: c.nats === 'ok',
      jetstream: c.nats === 'ok' && c.jetstreamError === undefined,
      ...(c.postgresRead !== undefined ? { postgresRead: c.postgresRead } : {}),
      ...(feeds ? { changeFeeds: notFollowing.length === 0 } : {}),
      ...(lagging.length > 0 ? { notFollowing: lagging } : {}),
    }

    if (c.nats === 'disconnected') disconnectedSince ??= now
    else disconnectedSince = undefined
    // Feeds and the stream's info are JetStream's to answer only over a connection that works;
    // otherwise the connection is what is wrong.
    const outage: string[] = []
    if (c.nats === 'ok') {
      if (c.jetstreamError !== undefined) outage.push(`JetStream: the event stream's info (${c.jetstreamError})`)
      for (const f of notFollowing) if (!refused(f)) outage.push(`change feed ${f.stream}: ${f.reason ?? 'not following'}`)
    }
    if (outage.length > 0) {
      const feedSince = notFollowing.filter((f) => f.since && !refused(f)).map((f) => Date.parse(f.since!))
      outageSince = Math.min(outageSince ?? now, ...feedSince)
    } else {
      outageSince = undefined
    }

    const own: string[] = []
    if (!c.postgres) own.push('Postgres does not answer')
    if (c.postgresRead === false) own.push('the read replica (DATABASE_READ_URL) does not answer')
    if (c.nats === 'closed') own.push('the NATS connection is closed')
    if (c.nats === 'silent') own.push('the NATS connection does not answer a round trip')
    if (c.nats === 'ok') for (const f of notFollowing) if (refused(f)) own.push(`change feed ${f.stream}: ${f.reason}`)
    const waited = (since: number | undefined, grace: number) => since !== undefined && (!everReady || now - since >= grace)
    if (c.nats === 'disconnected' && waited(disconnectedSince, opts.reconnectGraceMs)) own.push('the NATS connection is down (reconnecting)')
    if (denied.length > 0) own.push('denied subscriptions')
    const outageOver = outage.length > 0 && waited(outageSince, opts.graceMs)

    if (own.length > 0 || outageOver) {
      const message =
        denied.length > 0
          ? `NATS denies this node subscribe on ${denied.map((d) => d.subject).join(', ')} (permissions narrowed while it runs): it would miss what other nodes send there (revocations, room changes, presence); an operator must grant the NATS user subscribe on it again`
          : own.length > 0
            ? `not ready: ${own.join('; ')}`
            : `not ready: JetStream has not answered for ${Math.round((now - outageSince!) / 1000)} s (longer than FANFARE_READY_GRACE_S${everReady ? '' : ', and this node has not been ready yet'}): ${outage.join('; ')}`
      return {
        status: 'not_ready',
        message,
        details: {
          ...base,
          ...(outageOver ? { degradedSince: new Date(outageSince!).toISOString() } : {}),
          ...(denied.length > 0 ? { deniedSubscriptions: denied.map(({ subject, name, since }) => ({ subject, subscription: name, since })) } : {}),
        },
      }
    }

    // Degraded: a JetStream outage, or a reconnect, within its grace.
    const pending = [
      ...(outage.length > 0 ? [{ since: outageSince!, until: outageSince! + opts.graceMs, what: outage }] : []),
      ...(c.nats === 'disconnected' ? [{ since: disconnectedSince!, until: disconnectedSince! + opts.reconnectGraceMs, what: ['the NATS connection is down (reconnecting)'] }] : []),
    ]
    if (pending.length === 0) {
      everReady = true
      return { status: 'ready', body: { status: 'ready', ...base } }
    }
    const since = Math.min(...pending.map((p) => p.since))
    const until = Math.min(...pending.map((p) => p.until))
    return {
      status: 'degraded',
      body: {
        status: 'degraded',
        ...base,
        degraded: { since: new Date(since).toISOString(), notReadyAt: new Date(until).toISOString(), notAnswering: pending.flatMap((p) => p.what) },
      },
    }
  }
}
