import { DeliverPolicy, jetstream, jetstreamManager, type ConsumerMessages } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import { noticesOf, type ChangeNotice, type ChangeRun } from '../../../core/channels'
import type { Logger } from '../../../core/logger'
import { backoffMs, sleep } from '../../../core/backoff'
import { identityOf } from '../../../core/nats'
import { SpanKind, type Context } from '@opentelemetry/api'
import { contextOfNats, tracer } from '../../../core/tracing'

/** Whether a change feed is following its stream now, for readiness checks and logs. */
export type FeedStatus = {
  stream: string
  /** True while a consumer is delivering this node the stream's notices as they are stored. */
  following: boolean
  /** Why it is not following (absent while it is). */
  reason?: string
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
 * The feed owns its recovery instead of trusting the client's ordered-consumer reset, which in
 * @nats-io/jetstream 3.4 never delivers again after a server restart (it re-creates a consumer
 * that started by time with a start sequence too, which the server refuses, forever; and when it
 * does re-create one, its first pull asks for 0 messages). Whatever interrupts the consumer (a
 * reconnect, a consumer lost with the server's memory, missed heartbeats, any reset status, or a
 * watchdog that sees the stream grow while nothing arrives) stops it; the feed then checks which
 * incarnation of the stream exists and follows again right after the last sequence it delivered.
 * Nothing is missed that way, so no resync is needed, unless:
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
  onResync: () => void
  /** Sockets of this node subscribed to a channel (the push span's recipient count). */
  recipients?: (channel: string) => number
  lookBackMs?: number
  /** How often the watchdog compares the stream's last sequence with what was delivered. */
  checkEveryMs?: number
}): Promise<ChangeFeed> {
  const js = jetstream(deps.nc)
  const jsm = await jetstreamManager(deps.nc)
  const log = deps.logger.child({ stream: deps.stream })
  const stopping = new AbortController()
  const stopped = () => stopping.signal.aborted

  let messages: ConsumerMessages | undefined
  // The stream incarnation being read, and the last sequence delivered from it (or, until the
  // look-back has been delivered, the stream's last sequence when the feed started: what a
  // restart must resume after, and what the watchdog must not take for a stall).
  let identity: string | undefined
  let lastSeq = 0
  let following = false
  let reason: string | undefined = 'starting'

  const setFollowing = () => {
    if (!following && reason !== 'starting') log.info({ lastSeq }, 'change feed following again')
    following = true
    reason = undefined
  }
  /** Stops the current consumer; the loop follows again from `lastSeq`. */
  let interrupted = 0
  const interrupt = (why: string) => {
    if (stopped()) return
    interrupted++
    if (following) log.warn({ reason: why, lastSeq }, 'change feed interrupted; following again from its last sequence')
    following = false
    reason = why
    messages?.stop()
  }

  const follow = async (from: { startTime: Date } | { afterSeq: number }) => {
    const consumer = await js.consumers.get(
      deps.stream,
      'afterSeq' in from
        ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: from.afterSeq + 1 }
        : { deliver_policy: DeliverPolicy.StartTime, opt_start_time: from.startTime.toISOString() },
    )
    // A wide pull window: the default (100) sends a pull request every ~50 runs, a socket write each,
    // a large share of an API node's CPU when many channels each change often.
    return consumer.consume({ max_messages: 1000 })
  }

  /** Any status that means the consumer may no longer deliver: take over (see above). */
  const watch = async (current: ConsumerMessages) => {
    for await (const s of current.status()) {
      switch (s.type) {
        case 'consumer_deleted':
        case 'consumer_not_found':
        case 'stream_not_found':
        case 'heartbeats_missed':
        case 'reset':
        case 'ordered_consumer_recreated':
          if (messages === current) interrupt(s.type)
          break
        default:
      }
    }
  }

  // The connection: a disconnect means nothing is followed; after a reconnect, follow afresh
  // (the server may have restarted and lost the consumer with its memory).
  void (async () => {
    for await (const s of deps.nc.status()) {
      if (stopped()) break
      if (s.type === 'disconnect') interrupt('nats disconnected')
      else if (s.type === 'reconnect') interrupt('nats reconnected')
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
        const interruptions = interrupted
        const info = await jsm.streams.info(deps.stream)
        const now = identityOf(info)
        let lost = false
        if (identity !== undefined && now !== identity) {
          log.error({ was: identity, now }, 'the change stream was recreated (NATS lost its data?): following the new one, re-syncing subscribers')
          lastSeq = 0
          lost = true
        }
        identity = now
        if (first) lastSeq = info.state.last_seq
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
        // After a restart on the same stream the next run must be lastSeq + 1 (none of its
        // sequences are filtered out); anything else was removed meanwhile.
        let expect = first || lost ? undefined : lastSeq + 1
        first = false
        attempt = 0
        setFollowing()
        started()
        if (lost) deps.onResync()
        void watch(current).catch(() => {})
        for await (const m of current) {
          if (expect !== undefined && m.seq !== expect) {
            log.warn({ expected: expect, got: m.seq }, 'change runs were removed while the feed was away; re-syncing subscribers')
            deps.onResync()
          }
          expect = undefined
          lastSeq = Math.max(lastSeq, m.seq)
          let notices: ChangeNotice[]
          try {
            notices = noticesOf(m.json<ChangeRun>())
          } catch (err) {
            log.error({ err, subject: m.subject, seq: m.seq }, 'unreadable change run')
            continue
          }
          // A run whose batch was traced carries its context: its push is a span of that trace.
          const traced = m.headers ? contextOfNats(m.headers) : undefined
          if (traced && notices.length > 0) push(traced, notices)
          else for (const n of notices) deps.onNotice(n)
        }
        if (!stopped() && following) interrupt('consumer ended')
      } catch (err) {
        if (stopped()) break
        if (following || attempt === 0) log.warn({ err, lastSeq }, 'change feed cannot follow its stream; retrying')
        following = false
        reason = `cannot follow: ${(err as Error)?.message ?? String(err)}`
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
      await messages?.close()
      await done
      await watchdog
    },
    status: () => ({ stream: deps.stream, following, lastSeq, ...(reason ? { reason } : {}) }),
  }
}
