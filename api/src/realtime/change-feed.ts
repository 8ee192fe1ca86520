import { AckPolicy, DeliverPolicy, jetstreamManager, type JetStreamManager } from '@nats-io/jetstream'
import { createInbox, nanos, type Msg, type NatsConnection } from '@nats-io/transport-node'
import { noticesOf, type ChangeNotice, type ChangeRun } from '../../../core/channels'
import type { Logger } from '../../../core/logger'
import { runsOfData } from '../../../core/live-batches'
import { backoffMs, sleep } from '../../../core/backoff'
import { CONSUMER_DELETED, FEED_CONSUMER_DESCRIPTION, identityOf } from '../../../core/nats'
import { createSubscriptionWatch, type SubscriptionWatch } from '../../../core/nats-subscriptions'
import { SpanKind, type Context } from '@opentelemetry/api'
import { contextOfNats, tracer } from '../../../core/tracing'

/** Whether a change feed is following its stream now, for readiness checks and logs. */
export type FeedStatus = {
  stream: string
  /** True while a consumer is delivering this node the stream's notices as they are stored. */
  following: boolean
  /** Why it is not following (absent while it is). */
  reason?: string
  /** Since when it has not been following (ISO time; absent while it is). */
  since?: string
  /** Stream sequence of the last change run delivered. */
  lastSeq: number
}

export type ChangeFeed = {
  stop: () => Promise<void>
  status: () => FeedStatus
}

/**
 * Follows one change stream and hands every notice of every change run to `onNotice`, in stream
 * order, and says when notices may have been missed (`onResync`: the hub re-syncs the channels
 * this stream feeds).
 *
 * It starts a few seconds in the past rather than at "new": a subscriber's snapshot can only be
 * joined with notices this node receives, and starting back in time closes the window between this
 * node starting and its consumer existing. Older notices are dropped by the hub (their channels
 * have no subscribers yet).
 *
 * The live path is a plain subscription: the feed makes a push consumer (no acks, flow control,
 * idle heartbeats) that delivers to an inbox it subscribes to, and reads each run's stream and
 * delivery sequences from its reply subject. No client-side consumer machinery runs per message
 * (the pulls, status handling and message info of @nats-io/jetstream's consumers cost an API node
 * about twice the CPU per run; bench/findings.md), yet every run still has its place in the stream,
 * so a loss is seen exactly, never guessed from timing:
 * - a delivery sequence that skips one, or a heartbeat saying more was delivered than arrived (a
 *   lost tail), means deliveries were lost on the way (a slow-consumer cut, a route): the feed
 *   follows again right after the last stream sequence it handed on, from JetStream, which still
 *   holds the runs (the gap is filled, nothing is re-synced);
 * - a stream sequence that skips while deliveries do not means the stream removed runs before they
 *   reached this node (retention while it lagged): `onResync`.
 * The feed owns its recovery (rather than a client library's consumer reset: @nats-io/jetstream
 * 3.4's ordered consumer never delivered again after a server restart). Whatever interrupts the
 * consumer (a reconnect, a consumer lost with the server's memory, missed heartbeats, a lost
 * delivery, or a watchdog that sees the stream grow while nothing arrives) stops it; the feed then
 * checks which incarnation of the stream exists and follows again right after the last sequence it
 * delivered. Nothing is missed that way, so no resync is needed, unless:
 * - the stream was recreated (NATS lost its data; sequences restart at 1): it follows the new
 *   stream from its start and calls `onResync`;
 * - the first sequence delivered after a restart is not the next one (retention removed runs
 *   meanwhile): `onResync`.
 * An identity it cannot read is never taken for "the same": the feed retries and stays not
 * following meanwhile. While it is not following, `status()` says so (readiness is false) and
 * the transitions are logged.
 */
export async function startChangeFeed(deps: {
  nc: NatsConnection
  stream: string
  logger: Logger
  onNotice: (notice: ChangeNotice) => void
  /** A run that restarts its channel's history (see ChangeRun.restart), in stream order with the notices. */
  onRestart: (run: ChangeRun) => void
  onResync: () => void
  /** Sockets of this node subscribed to a channel (the push span's recipient count). */
  recipients?: (channel: string) => number
  lookBackMs?: number
  /** How often the watchdog compares the stream's last sequence with what was delivered. */
  checkEveryMs?: number
  /** The consumer's idle heartbeat: a lost tail is noticed within about this long. */
  heartbeatMs?: number
  /** Tests only: a delivery (by stream sequence) for which this returns true is dropped, as a cut connection would. */
  lose?: (streamSeq: number) => boolean
  /** The node's watched subscriptions (the consumer-deleted advisories); one of its own when absent. */
  subscriptions?: SubscriptionWatch
}): Promise<ChangeFeed> {
  const jsm = await jetstreamManager(deps.nc)
  const subscriptions = deps.subscriptions ?? createSubscriptionWatch({ nc: deps.nc, logger: deps.logger })
  const log = deps.logger.child({ stream: deps.stream })
  const stopping = new AbortController()
  const stopped = () => stopping.signal.aborted

  let messages: Follower | undefined
  // The stream incarnation being read, and the last sequence delivered from it (or, until the
  // look-back has been delivered, the stream's last sequence when the feed started: what a
  // restart must resume after, and what the watchdog must not take for a stall).
  let identity: string | undefined
  // The stream was found recreated and the subscribers have not been told yet: kept until a
  // consumer of the new stream follows, however many tries that takes (a try that fails, or is
  // interrupted, after the new identity was taken must not lose the resync).
  let resyncDue = false
  let lastSeq = 0
  let following = false
  let reason: string | undefined = 'starting'
  // When it stopped following (readiness tells a pause from an outage by it).
  let notFollowingSince: number | undefined = Date.now()

  const setFollowing = () => {
    if (!following && reason !== 'starting') log.info({ lastSeq }, 'change feed following again')
    following = true
    reason = undefined
    notFollowingSince = undefined
  }
  /** Stops the current consumer; the loop follows again from `lastSeq`. */
  let interrupted = 0
  const interrupt = (why: string) => {
    if (stopped()) return
    interrupted++
    if (following) log.warn({ reason: why, lastSeq }, 'change feed interrupted; following again from its last sequence')
    following = false
    reason = why
    notFollowingSince ??= Date.now()
    messages?.stop()
  }

  // Where the stream must go on for nothing to be missed: the next stream sequence once one was
  // delivered since the consumer started (a first consumer started by time has none).
  let expect: number | undefined

  /** One run, in delivery order (the follower checks that); a skipped stream sequence re-syncs (see above). */
  const onRun = (m: Msg, seq: number) => {
    // A run handed on already (redelivered after the ack wait by a stalled node's consumer).
    if (expect !== undefined && seq < expect) return
    if (expect !== undefined && seq !== expect) {
      log.warn({ expected: expect, got: seq }, 'change runs were removed before this node got them; re-syncing subscribers')
      deps.onResync()
    }
    expect = seq + 1
    lastSeq = Math.max(lastSeq, seq)
    // One run, or a live batch of several channels' runs (compressed or not: runsOfData): the stream
    // sequence checked above covers all of them, so a lost batch is seen as a lost run is.
    let runs: { run: ChangeRun; notices: ChangeNotice[] }[]
    try {
      runs = runsOfData(m.data).map((run) => ({ run, notices: noticesOf(run) }))
    } catch (err) {
      // Which channels it held cannot be known (a message damaged on the way, or a change format
      // newer than this node reads, should one start after `npm run migrate -- --live-batches`):
      // every subscriber of the kind is told to re-sync, never left with a silent gap.
      log.error({ err, subject: m.subject, seq }, 'unreadable change run; re-syncing subscribers')
      deps.onResync()
      return
    }
    // A run whose batch was traced carries its context: its push is a span of that trace.
    const traced = m.headers ? contextOfNats(m.headers) : undefined
    for (const { run, notices } of runs) {
      if (run.restart !== undefined) deps.onRestart(run)
      else if (traced && notices.length > 0) push(traced, notices)
      else for (const n of notices) deps.onNotice(n)
    }
  }

  const follow = (from: { startTime: Date } | { afterSeq: number }) =>
    followPush({
      nc: deps.nc,
      jsm,
      stream: deps.stream,
      from,
      heartbeatMs: deps.heartbeatMs ?? 5_000,
      lose: deps.lose,
      subscriptions,
      onRun,
      onLost: interrupt,
    })

  // The connection: a disconnect means nothing is followed; after a reconnect, follow afresh
  // (the server may have restarted and lost the consumer with its memory). Requests made while
  // disconnected are lost with the server they were buffered for and wait for their timeout, so
  // the loop waits for the reconnect before it tries again.
  let connected = true
  let reconnected: (() => void) | undefined
  const connection = () => (connected ? undefined : new Promise<void>((resolve) => (reconnected = resolve)))
  stopping.signal.addEventListener('abort', () => reconnected?.())
  void (async () => {
    for await (const s of deps.nc.status()) {
      if (stopped()) break
      if (s.type === 'disconnect') {
        connected = false
        interrupt('nats disconnected')
      } else if (s.type === 'reconnect') {
        connected = true
        reconnected?.()
        interrupt('nats reconnected')
      }
    }
  })().catch(() => {})

  // The watchdog: the stream grew past what was delivered, twice in a row with no progress, or
  // it is another incarnation now. Costs one stream info per check.
  const watchdog = (async () => {
    let stalledAt: number | undefined
    while (!stopped()) {
      await sleep(deps.checkEveryMs ?? 5_000, stopping.signal)
      if (stopped() || !following) {
        stalledAt = undefined
        continue
      }
      try {
        const info = await jsm.streams.info(deps.stream)
        if (!following) continue
        if (identityOf(info) !== identity) {
          interrupt('stream recreated')
        } else if (info.state.last_seq > lastSeq) {
          if (stalledAt === lastSeq) interrupt('stalled: the stream grew, nothing was delivered')
          stalledAt = lastSeq
        } else {
          stalledAt = undefined
        }
      } catch (err) {
        if (following) log.debug({ err }, 'change feed check failed')
      }
    }
  })()

  /** Hands a traced run's notices to the hub inside a push span (the hub sends in-order ones at once). */
  const push = (parent: Context, notices: ChangeNotice[]) => {
    const channel = notices[0].channel
    const attributes = { 'messaging.system': 'nats', 'messaging.operation.type': 'process', 'messaging.destination.name': deps.stream, 'fanfare.changes': notices.length }
    tracer.startActiveSpan('fanfare.push', { kind: SpanKind.CONSUMER, attributes }, parent, (span) => {
      try {
        for (const n of notices) deps.onNotice(n)
        span.setAttribute('fanfare.recipients', deps.recipients?.(channel) ?? 0)
      } finally {
        span.end()
      }
    })
  }

  // Resolved once the first attempt to follow has been made (followed or not): the node starts
  // serving with its feeds in place, and readiness says whether they follow.
  let started!: () => void
  const firstAttempt = new Promise<void>((resolve) => (started = resolve))
  const done = (async () => {
    let first = true
    for (let attempt = 0; !stopped(); ) {
      try {
        await connection()
        if (stopped()) break
        const interruptions = interrupted
        const info = await jsm.streams.info(deps.stream)
        const now = identityOf(info)
        if (identity !== undefined && now !== identity) {
          log.error({ was: identity, now }, 'the change stream was recreated (NATS lost its data?): following the new one, re-syncing subscribers')
          lastSeq = 0
          resyncDue = true
        }
        identity = now
        if (first) lastSeq = info.state.last_seq
        // After a restart on the same stream the next run must be lastSeq + 1 (none of its
        // sequences are filtered out); anything else was removed meanwhile.
        expect = first || resyncDue ? undefined : lastSeq + 1
        const current = first
          ? await follow({ startTime: new Date(Date.now() - (deps.lookBackMs ?? 10_000)) })
          : await follow({ afterSeq: lastSeq })
        messages = current
        if (stopped()) {
          // stop() ran while the consumer was being created: it had none to close. (close() would
          // wait for an iteration that never comes.)
          current.stop()
          break
        }
        if (interrupted !== interruptions) {
          // Interrupted while the consumer was being created (a reconnect): it may predate it.
          current.stop()
          continue
        }
        first = false
        attempt = 0
        setFollowing()
        started()
        if (resyncDue) {
          resyncDue = false
          deps.onResync()
        }
        await current.ended
        if (!stopped() && following) interrupt('consumer ended')
      } catch (err) {
        if (stopped()) break
        if (following || attempt === 0) log.warn({ err, lastSeq }, 'change feed cannot follow its stream; retrying')
        following = false
        reason = `cannot follow: ${(err as Error)?.message ?? String(err)}`
        notFollowingSince ??= Date.now()
        started()
      }
      if (stopped()) break
      await sleep(backoffMs(attempt++), stopping.signal)
    }
    started()
  })()
  await firstAttempt

  return {
    stop: async () => {
      stopping.abort()
      following = false
      reason = 'stopped'
      notFollowingSince ??= Date.now()
      await messages?.close()
      await done
      await watchdog
    },
    status: () => ({
      stream: deps.stream,
      following,
      lastSeq,
      ...(reason ? { reason } : {}),
      ...(!following && notFollowingSince !== undefined ? { since: new Date(notFollowingSince).toISOString() } : {}),
    }),
  }
}

/** The consumer a feed follows now. */
type Follower = {
  /** Stops delivering at once (nothing is handed on after it) and deletes the consumer in the background. */
  stop: () => void
  /** `stop`, then waits for the consumer's deletion. */
  close: () => Promise<void>
  /** Resolved once stopped. */
  ended: Promise<void>
}

/** Runs a feed's consumer may deliver before this node acknowledges them. */
const WINDOW = 10_000

/**
 * A push consumer of `stream` starting at `from` that delivers to an inbox this connection
 * subscribes to: one ack per event-loop turn (`AckPolicy.All`) bounds what the server sends ahead
 * of this node to `WINDOW` runs, and idle heartbeats
 * say how many deliveries the server made (so a lost last one is seen too). Each run goes to `onRun`
 * with its stream sequence, in order; anything that may have lost a delivery calls `onLost` once
 * and nothing is handed on after it (the feed then stops this consumer and makes a new one after
 * the last sequence it handed on).
 */
async function followPush(o: {
  nc: NatsConnection
  jsm: JetStreamManager
  stream: string
  from: { startTime: Date } | { afterSeq: number }
  heartbeatMs: number
  lose?: (streamSeq: number) => boolean
  subscriptions: SubscriptionWatch
  onRun: (m: Msg, streamSeq: number) => void
  onLost: (why: string) => void
}): Promise<Follower> {
  const inbox = createInbox()
  let delivered = 0 // the consumer's delivery sequence of the last run handed on
  let heard = true // a run or a heartbeat arrived since the last check
  let stopped = false
  let end!: () => void
  const ended = new Promise<void>((resolve) => (end = resolve))
  const lost = (why: string) => {
    if (stopped) return
    stopped = true // nothing after a hole is handed on
    o.onLost(why)
  }
  // The window: the consumer acks all, so acking the last run of an event-loop turn acks the turn's
  // runs with one message, and the server holds back once WINDOW runs are unacked.
  let lastReply: string | undefined
  let acking = false
  const ack = () => {
    acking = false
    if (stopped || !lastReply) return
    try {
      o.nc.publish(lastReply)
    } catch (err) {
      // A closed connection: nothing to bound any more, and the feed is being stopped.
      lost(`ack failed: ${(err as Error)?.message ?? String(err)}`)
    }
  }
  /** Heartbeats: no data, headers only. */
  const control = (m: Msg) => {
    const h = m.headers
    if (!h) return
    const last = Number(h.get('Nats-Last-Consumer'))
    if (last > delivered) lost(`deliveries lost: the server delivered ${last}, ${delivered} arrived`)
  }
  const sub = o.nc.subscribe(inbox, {
    callback: (err, m) => {
      if (stopped) return
      if (err) return lost(`subscription failed: ${err.message}`)
      heard = true
      if (m.data.length === 0) {
        control(m)
        return
      }
      const at = sequencesOf(m.reply)
      // A delivery without its place in the stream cannot be checked for holes: never hand it on silently.
      if (!at) return lost(`a delivery without stream sequences (reply ${m.reply ?? 'none'})`)
      if (o.lose?.(at.stream)) return
      if (at.delivery !== delivered + 1) return lost(`deliveries lost: expected delivery ${delivered + 1}, got ${at.delivery}`)
      delivered = at.delivery
      lastReply = m.reply
      if (!acking) {
        acking = true
        setImmediate(ack)
      }
      o.onRun(m, at.stream)
    },
  })
  const timer = setInterval(() => {
    if (!heard) lost('heartbeats missed')
    heard = false
  }, 2 * o.heartbeatMs)
  let name: string | undefined
  try {
    const info = await o.jsm.consumers.add(o.stream, {
      // What `npm run migrate -- --live-batches` looks for: a follower that reads live batches.
      description: FEED_CONSUMER_DESCRIPTION,
      deliver_subject: inbox,
      ack_policy: AckPolicy.All,
      max_ack_pending: WINDOW,
      idle_heartbeat: nanos(o.heartbeatMs),
      mem_storage: true,
      num_replicas: 1,
      ...('afterSeq' in o.from
        ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: o.from.afterSeq + 1 }
        : { deliver_policy: DeliverPolicy.StartTime, opt_start_time: o.from.startTime.toISOString() }),
    })
    name = info.name
  } catch (err) {
    clearInterval(timer)
    sub.unsubscribe()
    throw err
  }
  // A consumer deleted from under it (an operator, a server that lost it) sends nothing more; the
  // server's advisory says so at once rather than after the missed heartbeats. Only the advisory
  // itself means that: NATS denying the subscription (permissions narrowed by a reload) said
  // "deleted" to every feed, which then made a new consumer, was denied again, and so on, never
  // following for long. Denied, the advisory is a lost shortcut, not a lost feed: the heartbeats
  // still see a deleted consumer (within 2 heartbeats), so the watch logs and counts the denial
  // without taking the node out of service (non-essential).
  const deleted = o.subscriptions.subscribe(`${CONSUMER_DELETED}.${o.stream}.${name}`, {
    name: 'consumer_deleted',
    essential: false,
    onMessage: () => lost('consumer deleted'),
  })
  // Without interest the server removes an ephemeral push consumer by itself (after its inactive
  // threshold). Only a feed that stops deletes it at once: a request made while the connection is
  // down (the usual reason to stop a consumer) would wait for its timeout.
  const stop = () => {
    stopped = true
    clearInterval(timer)
    if (sub.isClosed()) return
    sub.unsubscribe()
    deleted.unsubscribe()
    end()
  }
  return {
    stop,
    close: async () => {
      stop()
      if (name) await o.jsm.consumers.delete(o.stream, name).catch(() => {})
    },
    ended,
  }
}

/**
 * The stream and delivery sequences from a JetStream delivery's reply subject:
 * `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<delivery seq>.<time>.<pending>`, or with
 * `<domain>.<account hash>` after `$JS.ACK` and maybe a random token at the end (newer servers; the
 * same 11-or-more rule as nats.js' own parser). Read in place, without splitting: it runs for every
 * run a node receives (splitting into its ~10 tokens was ~6% of an API node's CPU in a fan-out burst).
 */
export function sequencesOf(reply: string | undefined): { stream: number; delivery: number } | undefined {
  if (!reply?.startsWith('$JS.ACK.')) return undefined
  // The dots after `$JS.ACK.`: dot n lies between tokens n+1 and n+2. The v1 form has 6 of them
  // (the stream sequence between dots 3 and 4), v2 8 or more (between dots 5 and 6).
  const d1 = reply.indexOf('.', 8)
  const d2 = d1 < 0 ? -1 : reply.indexOf('.', d1 + 1)
  const d3 = d2 < 0 ? -1 : reply.indexOf('.', d2 + 1)
  const d4 = d3 < 0 ? -1 : reply.indexOf('.', d3 + 1)
  const d5 = d4 < 0 ? -1 : reply.indexOf('.', d4 + 1)
  const d6 = d5 < 0 ? -1 : reply.indexOf('.', d5 + 1)
  if (d6 < 0) return undefined
  const d7 = reply.indexOf('.', d6 + 1)
  if (d7 < 0) return { stream: digits(reply, d3 + 1, d4), delivery: digits(reply, d4 + 1, d5) }
  const d8 = reply.indexOf('.', d7 + 1)
  if (d8 < 0) return undefined // 10 tokens: neither form
  return { stream: digits(reply, d5 + 1, d6), delivery: digits(reply, d6 + 1, d7) }
}

/** The decimal number in `s` from `start` to `end` (exclusive); NaN if that is empty or not all digits. */
function digits(s: string, start: number, end: number): number {
  if (end <= start) return Number.NaN
  let n = 0
  for (let i = start; i < end; i++) {
    const d = s.charCodeAt(i) - 48
    if (d < 0 || d > 9) return Number.NaN
    n = n * 10 + d
  }
  return n
}
