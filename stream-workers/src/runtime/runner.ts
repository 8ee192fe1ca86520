import type { Consumer, ConsumerMessages, JetStreamClient, JetStreamManager, JsMsg } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import type { ReplayReply, ReplayRequest } from '../../../core/dead-letters'
import type { Db } from '../../../core/db/client'
import { subjects } from '../../../core/events'
import { nextBySubject, type ChangeFormat } from '../../../core/nats'
import type { Logger } from '../../../core/logger'
import { StreamChanged } from './stream-check'
import { takeExpiredRange } from '../../../core/retention-watch'
import type { Projection } from '../projections/types'
import { openCheckpoint } from './open-checkpoint'
import { backoffMs, sleep } from '../../../core/backoff'
import { applyBatch, batchMessageOf, claimFence, type BatchOwner, type BatchResult } from './batch'
import { consumerName } from '../../../core/projections'
import type { RunnerLag, RunnerStep } from '../../../core/projection-lag'
import { ACK_WAIT_MS, createOwnershipConsumer } from './consumer'
import { addResult, applyOrOneByOne } from './one-by-one'
import { pullNow, type Delivery } from './pull-now'
import { CheckpointMovedError, dbErrorSummary, errorMessageOf, FencedError, isDbError, isProgrammingError, isRefusedBatch, isTransientDbError, StaleReadError } from './errors'
import { createPartSize } from './part-size'
import type { AckedPublisher } from '../../../core/acked-publish'
import { publishBatch, publishEvents, publishRuns, type OutboxCleaner, type OutboxEvent, type OutboxRun } from './outbox'
import { replayDeadLetter } from './replay'
import type { BatchCommitter } from './committer'
import { context, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Context, type Link } from '@opentelemetry/api'
import { millis, type MsgHdrs } from '@nats-io/transport-node'
import type { Metrics } from '../../../core/metrics'
import { isTracing, linkOfNats, natsHeadersOf, tracer } from '../../../core/tracing'

/** Test seams. Production passes none. */
export type RunnerHooks = {
  /** Called after a batch committed and before it is acked; a throw simulates a crash there. */
  onBeforeAck?: (info: { projection: string; partition: number; seqs: number[] }) => void | Promise<void>
  /** Called when a batch's first delivery arrived, before the runner pulls the rest of the batch. */
  onFirstDelivery?: (info: { projection: string; partition: number; seq: number }) => void | Promise<void>
  /** Called when the batches of these partitions committed as one statement (see createBatchCommitter). */
  onGroupCommit?: (info: { projection: string; partitions: number[] }) => void
  /** Called after dead letters of unclaimed messages committed (see startUnclaimedPoller); a throw simulates a crash there. */
  onUnclaimedCommit?: (info: { seqs: number[] }) => void | Promise<void>
  /**
   * The position a new consumer starts after, instead of the checkpoint: a number past it
   * simulates a consumer whose state went past events it never delivered (see consumeFrom).
   */
  consumerAfter?: (info: { projection: string; partition: number; checkpoint: number }) => number | undefined
  /**
   * The bound on a pull for a first message, instead of PULL_BOUND_MS: one below IDLE_PULL_MS makes
   * every pull of a quiet partition outlive it, as a pull nothing ends would.
   */
  pullBoundMs?: number
}

/**
 * What a process gives the work of each partition it holds, the same for all of it: the runners of
 * its projections and, on partition 0, the catch of unclaimed messages (see startUnclaimedPoller).
 * One list, so that the process builds it once.
 */
export type PartitionDeps = {
  db: Db
  jsm: JetStreamManager
  logger: Logger
  /** The event stream's name (FANFARE_STREAM). */
  stream: string
  prefix: string
  partitions: number
  /** Most messages in one batch, and most dead letters written in one statement (FANFARE_BATCH_SIZE). */
  batchSize: number
  now?: () => Date
  hooks?: RunnerHooks
  /** A bug: the runner (or poller) has stopped; the process should exit non-zero. */
  onFatal: (err: unknown) => void
  /** The process's metrics (batches, lag, dead letters). */
  metrics: Metrics
  /**
   * The change format the deployment's change streams record (core/nats.ts ChangeFormat), asked
   * once per batch (it is committed and published the same way; `runs` when absent): with live
   * batches a batch's runs are kept in change_history and published as live batches (one message
   * per channel kind on the partition's subject, see publishBatch), compressed when recorded,
   * instead of one message per run.
   */
  changeFormat?: () => ChangeFormat
  /**
   * With live batches: told of the runs each committed batch (or replay) kept in change_history,
   * before they are published: the history pruner prunes those channels (see HistoryTouches).
   */
  onHistory?: (runs: readonly OutboxRun[]) => void
}

export type RunnerDeps = PartitionDeps & {
  /** The connection `js` uses (the no_wait pulls, see pullNow). */
  nc: NatsConnection
  js: JetStreamClient
  /** Publishes the change runs of committed batches (one per process). */
  publisher: AckedPublisher
  projection: Projection
  partition: number
  /** Deletes the outbox rows of the runs this runner published (one per process). */
  cleaner: OutboxCleaner
  /**
   * Commits this runner's batches together with those of the process's other runners of the same
   * projection (see createBatchCommitter). Absent: each batch is applied alone (applyBatch).
   */
  committer?: BatchCommitter
  /** A newer owner wrote the checkpoint: this runner has stopped; the lease is not ours. */
  onFenced: () => void
  /**
   * FANFARE_EVENT_RETENTION_MS: when above 0, each batch is first checked for events of the
   * partition that retention deleted before they were applied (see takeExpiredRange). 0: never.
   */
  retentionMs?: number
}

export type Runner = {
  /**
   * Stops taking new messages, lets an in-flight batch finish (and then acks it and publishes its
   * change runs), abandons a batch that is still retrying, and, when `deleteConsumer`,
   * removes this ownership's consumer. Resolves when the runner is idle.
   */
  stop: (opts?: { deleteConsumer?: boolean }) => Promise<void>
  /**
   * Runs dead letter `id` of this projection and partition through the projection again, between
   * two batches (see replayDeadLetter); `unavailable` (nothing changed) while starting or stopping,
   * or if this runner no longer owns the partition.
   */
  replay: (request: ReplayRequest) => Promise<ReplayReply>
  /**
   * This runner's lag as of its last delivery (see RunnerLag), what GET /admin/projections shows:
   * taken from what the runner already knows, never from a consumer info (on nats-server before
   * 2.9.15 an info makes a consumer with a backlog crawl: core/projection-lag.ts).
   */
  lag: () => RunnerLag
}

/** Why the consume loop needs a new consumer. */
class ResetConsumer extends Error {}

/** A batch failed with an error that retrying cannot fix. */
class FatalBatchError extends Error {
  constructor(
    readonly cause: unknown,
    readonly first: { subject: string; seq: number; deliveryCount: number },
  ) {
    super(`batch failed: ${errorMessageOf(cause)}`)
  }
}

/**
 * How long a batch may take before the runner counts its subjects' events (a stream info), the
 * start from which a stall's lag counts what is stored (see stalledLag). Batches take 5-250 ms.
 */
const STALL_COUNT_AFTER_MS = 1_000

/** Extends the ack wait of a batch under work well before it runs out. */
const WORKING_EVERY_MS = Math.floor(ACK_WAIT_MS / 3)
/** How long an idle pull waits at the server for a first message. */
const IDLE_PULL_MS = 5_000
/**
 * How long the pull of the rest of a batch may go without a delivery (from the request, then from
 * each delivery) before the runner gives up on it. Generous, and counted from the last delivery:
 * the pull ends as soon as the batch has arrived, and a loaded server catching up after a restart
 * delivered 499 in 5-10 s (with a 2 s bound, pulls expired part-way, over and over, after a NATS
 * restart in CI; with a 10 s bound from the request, they were cut while still delivering, and the
 * delivery after the cut, gone to an inbox nobody read, reset the consumer).
 */
const REST_PULL_MS = 10_000
/**
 * How long the server holds the pull of the rest of a batch that finds nothing although the first
 * delivery said more was there (see pullBatch): the one wait a removed, still counted message
 * costs. A healthy server delivers what is there within milliseconds and then ends the pull; one
 * slower than this ends it early, and what it did not deliver comes with the next batch.
 */
const REST_EXPIRES_MS = 500
/**
 * The client's own bound on such a pull (without a delivery, see REST_PULL_MS): the server's 408
 * at REST_EXPIRES_MS, with room for a slow answer.
 */
const REST_EXPIRES_BOUND_MS = REST_EXPIRES_MS + 2_000
/**
 * The runner's own bound on a pull for a first message (see fetchSome): nats.js ends it at its
 * expiry (IDLE_PULL_MS) or, when the server stops answering, after two missed heartbeats (half the
 * expiry each), re-pulling after a reconnect. A pull still open this long after its request is
 * stopped, and the consumer reset: nothing else would end it (a cluster soak once left three
 * runners of one worker waiting with no pull at the server after a NATS node was killed,
 * bench/findings.md).
 */
const PULL_BOUND_MS = IDLE_PULL_MS + 10_000
/** How often the runner looks at how long it has been on one step (see watchSteps). */
const WATCH_EVERY_MS = 5_000
/**
 * A step taking this long is said in a warning (again each time as long again): what the runner
 * waits for, so that a partition standing still says why (GET /admin/projections shows it too).
 */
const LONG_STEP_MS = 30_000

/**
 * Runs one projection on one owned partition: creates this ownership's consumer from the
 * checkpoint, then pulls batches and applies each in one statement (see applyBatch), acks it,
 * and publishes its change runs while it pulls and applies the next. Transient database faults retry the same batch in place; NATS
 * trouble or a missing delivery recreates the consumer from the checkpoint, so messages are
 * always applied in stream order without gaps.
 */
export function startRunner(deps: RunnerDeps): Runner {
  let log = deps.logger.child({ projection: deps.projection.name, partition: deps.partition })
  // Claimed from Postgres when the runner starts (claimFence), kept through consumer resets.
  let token = 0
  let name: string | undefined
  const now = deps.now ?? (() => new Date())
  const abort = new AbortController()
  let pulling: ConsumerMessages | undefined
  // What the runner waits for now (see RunnerStep), since when (ms since the epoch), and how many
  // warnings said so.
  let step: RunnerStep = 'consumer'
  let stepSince = Date.now()
  let stepSaid = 0
  const enter = (next: RunnerStep) => {
    step = next
    stepSince = Date.now()
    stepSaid = 0
  }
  const lag = deps.metrics.worker.lag(deps.projection.name, deps.partition)
  // The partition's lag as of the last delivery (see Runner.lag), and when it was set. Never asked
  // of the consumer: on nats-server before 2.9.15 a consumer info makes a consumer with a backlog
  // crawl (bench/findings.md, 2026-11-30, the filtered-pending count), and the runner already has
  // the server's count in every delivery (its `pending`) and in its consumer's creation.
  let lagNow: number | null = null
  let lagAt: Date | null = null
  // Counts of a stalled batch's waiting events still on their way (see stalledLag): a value set
  // since (setLag) is newer than their answer.
  let lagAsks = 0
  const setLag = (events: number) => {
    lagAsks++
    lagNow = events
    lagAt = new Date()
    lag.set(events)
  }
  const filter = subjects.projectionFilter(deps.prefix, deps.partition, deps.projection.area)
  /**
   * Events stored on this runner's subjects: the stream's per-subject counts (a stream info, which
   * no consumer's position is involved in), never a consumer info.
   */
  const storedOnSubjects = async () => {
    const info = await deps.jsm.streams.info(deps.stream, { subjects_filter: filter })
    return Object.values(info.state.subjects ?? {}).reduce((a, b) => a + b, 0)
  }
  /** The count of storedOnSubjects when a stall began; asked again at the next failure if it failed. */
  type StallStart = { stored?: Promise<number> }
  const storedAt = (start: StallStart) =>
    (start.stored ??= storedOnSubjects().catch((err) => {
      start.stored = undefined
      throw err
    }))
  /**
   * The lag of a partition stalled at one of its tries (a batch Postgres does not take, see
   * applyWithRetry; a consumer that cannot be reopened, see run): `waiting` (what waited as of the
   * last delivery), plus the events stored on the runner's subjects since the stall began (`start`),
   * once counted. Events stored between the last delivery and that start are not counted.
   */
  const stalledLag = (waiting: number, start: StallStart) => {
    setLag(Math.max(waiting, lagNow ?? 0))
    const asked = lagAsks
    void Promise.all([storedAt(start), storedOnSubjects()]).then(([before, now]) => {
      if (asked !== lagAsks || abort.signal.aborted) return
      setLag(waiting + Math.max(0, now - before))
    }, () => {})
  }
  // The part size statement timeouts taught this runner, kept from batch to batch (see PartSize).
  const sizes = createPartSize(() => deps.metrics.worker.timedOut(deps.projection.name))

  /**
   * One pull of up to `max` messages. A pull that ends with an error after delivering messages
   * still returns them with the error: they are the consumer's next deliveries in order (the
   * caller checks the delivery sequence), and throwing them away would make a slow server
   * (a pull that outlives its expiry, then "heartbeats missed") restart the same batch forever.
   */
  const fetchSome = async (consumer: Consumer, max: number, expires: number): Promise<{ msgs: JsMsg[]; err?: unknown }> => {
    const iter = await consumer.fetch({ max_messages: max, expires })
    pulling = iter
    const msgs: JsMsg[] = []
    try {
      for await (const m of iter) msgs.push(m)
      return { msgs }
    } catch (err) {
      return { msgs, err }
    } finally {
      pulling = undefined
    }
  }

  /**
   * Up to batchSize messages that are already there: wait for one, then take what is stored now. A
   * pull that fails before delivering anything throws (the consumer is recreated); one that fails
   * part-way yields what it delivered, and the next pull, starting with nothing held, shows
   * whether the consumer is healthy (a delivery it cut off shows up as a gap there).
   */
  const pullBatch = async (consumer: Consumer): Promise<Delivery[]> => {
    enter('pull')
    const first = await fetchSome(consumer, 1, IDLE_PULL_MS)
    if (first.msgs.length === 0) {
      if (first.err && !abort.signal.aborted) throw first.err
      return first.msgs
    }
    // Held now: this delivery, and what it said is stored behind it.
    setLag(1 + first.msgs[0].info.pending)
    await deps.hooks?.onFirstDelivery?.({ projection: deps.projection.name, partition: deps.partition, seq: first.msgs[0].seq })
    if (abort.signal.aborted || deps.batchSize <= 1) return first.msgs
    // The rest is what is stored NOW, not what the first delivery said was pending: a waiting pull
    // gets an event the moment it is stored, while the events stored with it (the rest of its
    // request) are still being stored, so its `pending` missed them, and they waited for this
    // whole batch to be applied and acked before a pull asked for them: at 1,000 events/s ~20% of
    // batches began that way, and they were the p99 (bench/findings.md, 2026-11-29 evening). A
    // no_wait pull ends as soon as what is there was delivered, so it never waits for more.
    const more = deps.batchSize - 1
    // nats-server 2.9.10 still counts, in the consumer's num_pending, a message removed from the
    // stream (retention, a delete) before its delivery, and while that count is above zero it
    // answers a no_wait pull that finds nothing with nothing at all: the pull waits for the next
    // event stored. The first delivery's `pending` is that count: when it is above zero the pull
    // carries an expiry, and the server ends it (a 408) after REST_EXPIRES_MS if it found nothing.
    // When it is 0 the count is exact, and a pull that finds nothing ends at once (a 404): the
    // usual case of a quiet partition pays no expiry.
    // A count of a batch or more is a backlog (a runner behind, e.g. after a NATS restart): there
    // the expiry is what hurts. nats-server 2.9.10 drops a pull whose expiry passes while it is
    // still delivering, silently (no 408), so a server slower than REST_EXPIRES_MS for a batch (one
    // catching up from its store under ingest took 5-10 s for 499) had every batch cut at 0.5 s and
    // each pull wait out its bound: the partition crawled at a few dozen events a second while the
    // API stored thousands (bench/findings.md, 2026-11-30, the NATS-restart stall). Without an
    // expiry the server ends the pull at the batch, or with a 408 once what is there was delivered
    // (a no_wait pull that delivered something never waits); only a backlog made of nothing but
    // removed, still counted messages would leave it waiting (pullNow's bound, once: the info below).
    const pending = first.msgs[0].info.pending
    const counted = pending > 0 && pending < more
    enter('rest')
    const rest = await pullNow(deps.nc, {
      apiPrefix: deps.js.apiPrefix,
      stream: deps.stream,
      consumer: name!,
      max: more,
      ...(counted ? { expiresMs: REST_EXPIRES_MS, timeoutMs: REST_EXPIRES_BOUND_MS } : { timeoutMs: REST_PULL_MS }),
    })
    if (rest.err) log.debug({ err: rest.err, wanted: more, got: rest.msgs.length }, 'pull ended early; applying what it delivered')
    // Counted and not there (or no answer at all): a consumer info makes the server count again, so
    // the next batches do not wait for the same removed message (and their `pending`, the lag
    // gauge, is right again).
    // (The one consumer info a runner asks: rare, and needed; it re-arms nats-server 2.9.10's slow
    // count only for a consumer that is behind, see core/projection-lag.ts.)
    if (rest.msgs.length === 0 && (counted || rest.err)) await consumer.info().catch((err) => log.debug({ err }, 'consumer info after a pull that found nothing failed'))
    const all = [...first.msgs, ...rest.msgs]
    setLag(all.length + all[all.length - 1].info.pending)
    return all
  }

  // Batches and dead-letter replays take turns: a replay's reads and writes must not interleave
  // with a batch's (both rely on the checkpoint guard, and a replay leaves the checkpoint as is).
  let turn: Promise<unknown> = Promise.resolve()
  const exclusive = <T>(work: () => Promise<T>): Promise<T> => {
    const mine = turn.then(work, work)
    turn = mine.catch(() => {})
    return mine
  }

  /** A dead-letter replay between two batches (see Runner.replay). */
  const replay = async (request: ReplayRequest): Promise<ReplayReply> => {
    const id = request.id
    // Before the consumer opened, `checkpoint` is not known yet; once stopped, the lease is not ours.
    if (!stream || abort.signal.aborted) return { outcome: 'unavailable', message: 'the runner is starting or stopping' }
    try {
      const format = deps.changeFormat?.() ?? 'runs'
      const owner = { projection: deps.projection, partition: deps.partition, token, partitions: deps.partitions, stream, history: format !== 'runs' }
      const { reply, runs, events } = await exclusive(async () => {
        try {
          return await replayDeadLetter(deps.db, owner, checkpoint, request, now())
        } catch (err) {
          // A rebuild's switch moved the checkpoint past what this runner last saw (an idle runner
          // only notices at its next batch, which re-reads it). The replay does not depend on the
          // position (batches are kept out by the turn, other owners by the fence): it applies at
          // the checkpoint as it is, and `checkpoint` stays as this runner's consumer knows it.
          if (err instanceof CheckpointMovedError && err.actual !== undefined) return replayDeadLetter(deps.db, owner, err.actual, request, now())
          throw err
        }
      })
      log.info({ deadLetter: id, outcome: reply.outcome }, 'dead letter replayed')
      if (runs.length > 0 || events.length > 0) {
        if (publishing) await publishing
        publishing = publishInBackground(runs, events, format)
      }
      return reply
    } catch (err) {
      log.warn({ err, deadLetter: id }, 'dead letter replay failed')
      return { outcome: 'unavailable', message: err instanceof FencedError ? 'this worker no longer owns the partition' : errorMessageOf(err) }
    }
  }

  const applyWithRetry = async (batch: Delivery[], history: boolean, trace?: Context, ready?: Promise<void>): Promise<BatchResult | undefined> => {
    const owner = { projection: deps.projection, partition: deps.partition, token, partitions: deps.partitions, stream, history }
    const messages = batch.map(batchMessageOf)
    const keepAlive = setInterval(() => batch.forEach((m) => m.working()), WORKING_EVERY_MS)
    // The checkpoint moves inside the turn: a replay waiting for it must see the new one.
    const turn = (work: () => Promise<BatchResult>) =>
      exclusive(async () => {
        const result = await work()
        checkpoint = result.checkpoint
        return result
      })
    // A batch too big for statement_timeout is applied in parts (see PartSize), each its own
    // statement in stream order: `rest` is what is not applied yet, `total` what the parts applied so far.
    let rest = messages
    // Where the batch's stall began (see stalledLag): the count of its subjects is taken once the
    // batch has taken STALL_COUNT_AFTER_MS, or at its first failed try. A statement left hanging (a
    // Postgres path that stopped answering) fails only after FANFARE_DATABASE_TIMEOUT_MS: counted
    // from its failure, the events stored meanwhile would be missed, and they are what waits.
    const stall: StallStart = {}
    const stallCount = setTimeout(() => void storedAt(stall).catch(() => {}), STALL_COUNT_AFTER_MS)
    const total: BatchResult = { applied: 0, skipped: 0, deadLettered: 0, runs: [], events: [], checkpoint }
    try {
      for (let attempt = 0; ; attempt++) {
        if (abort.signal.aborted) return undefined
        const size = sizes.next(rest.length)
        const part = size < rest.length ? rest.slice(0, size) : rest
        let result: BatchResult
        try {
          // A batch Postgres refuses for its data goes one message at a time (see applyOrOneByOne);
          // retried after a transient fault, the whole batch is tried again from the checkpoint.
          result = await applyOrOneByOne(deps.db, owner, checkpoint, part, now, {
            turn,
            opts: { trace, ready },
            whole: () => (deps.committer ? deps.committer.apply(owner, checkpoint, part, now(), { trace, ready }) : applyBatch(deps.db, owner, checkpoint, part, now(), { trace, ready })),
            onFallback: (err) => log.warn({ err: dbErrorSummary(err), size: part.length, seq: part[0].seq }, 'Postgres refused the batch for its data; applying its messages one by one'),
            onRefused: (m, _reason, err) => log.error({ err, subject: m.subject, seq: m.seq }, 'an event Postgres refuses for its data: dead-lettered'),
          })
        } catch (err) {
          // The skip check found a hole, or could not ask (see noSkipBefore): a new consumer.
          if (err instanceof ResetConsumer) throw err
          if (err instanceof StaleReadError) {
            // A board's rules changed between the batch's reads and its write: read again.
            log.info({ seq: part[0].seq, size: part.length }, 'rows the batch read changed before its write; applying it again')
            continue
          }
          if (isRefusedBatch(err) || !isTransientDbError(err)) throw err
          const first = part[0]
          const last = part[part.length - 1]
          const where = { size: part.length, batchSize: batch.length, subject: first.subject, seq: first.seq, lastSubject: last.subject, lastSeq: last.seq }
          const line = { err, attempt, ...where, deliveryCount: batch[0].info.deliveryCount, lastDeliveryCount: batch[batch.length - 1].info.deliveryCount }
          // Stalled until Postgres takes the batch: the lag says what waits (the rest of this batch,
          // what the consumer held behind it at the batch's last delivery, and what was stored
          // since: NATS answers while Postgres is away), not the last applied batch's, which showed
          // a stalled partition as caught up. Counted from the stream, never by asking the
          // consumer: an info (as this did) makes nats-server before 2.9.15 read the backlog 20-50x
          // slower once Postgres is back (see Runner.lag).
          stalledLag(rest.length + batch[batch.length - 1].info.pending, stall)
          const timeout = sizes.failed(err, part.length)
          if (timeout === 'split') {
            log.warn({ ...line, nextSize: sizes.next(part.length) }, 'the batch outlasts statement_timeout; retrying it in smaller parts')
          } else if (timeout === 'alone') {
            // Never skipped nor dead-lettered: the event is not bad, the database is too slow for it.
            log.error(line, 'one event alone outlasts statement_timeout: the partition is stalled until statement_timeout is raised or the database is faster; retrying it')
          } else {
            log.warn(line, 'batch failed with a transient error; retrying the same batch')
          }
          batch.forEach((m) => m.working())
          await sleep(backoffMs(attempt), abort.signal)
          continue
        }
        sizes.committed(part.length)
        if (part === messages) return result
        addResult(total, result)
        rest = rest.slice(part.length)
        if (rest.length === 0) return total
        // A part applied: the database is moving, the next part starts a fresh backoff.
        attempt = -1
      }
    } finally {
      clearInterval(keepAlive)
      clearTimeout(stallCount)
    }
  }

  /**
   * Resolves if the first event stored on this runner's subjects after the checkpoint is `first`
   * (a batch's first delivery); rejects with ResetConsumer if it is an earlier one, or if NATS did
   * not answer. Delivery numbers only say that nothing the consumer sent was lost on the way: a
   * consumer whose replicated state went past events it never delivered (a cluster soak under
   * rolling NATS restarts once ended 148 acknowledged events short, every consumer caught up, after
   * RAFT catch-up errors in the consumers' groups) numbers its deliveries on without a gap, and
   * acking the batch (ack all) would pass the missing events for good. One get per batch that does
   * not start right after the checkpoint (nearly all with several partitions), so it is asked
   * beside the batch's reads, and the batch's statement waits for it (ApplyOptions.ready): asked
   * before them, its round trip was on every batch's path (p50 ~0.7 ms of a ~5 ms batch at 1,000
   * events/s, bench/findings.md).
   */
  const noSkipBefore = (first: number): Promise<void> => {
    const after = checkpoint
    const checked = deps.jsm.streams.getMessage(deps.stream, nextBySubject(filter, after + 1)).then(
      (stored) => {
        if (!stored || stored.seq >= first) return
        deps.metrics.worker.skipped(deps.projection.name, deps.partition)
        throw new ResetConsumer(`the consumer skipped stored events: the first after the checkpoint (${after}) is ${stored.seq}, the batch starts at ${first}`)
      },
      (err) => {
        throw new ResetConsumer(`could not check for skipped events: ${errorMessageOf(err)}`)
      },
    )
    // Awaited by the batch's statement; a batch that fails before it leaves it unawaited.
    checked.catch(() => {})
    return checked
  }

  const consumeFrom = async (consumer: Consumer) => {
    // A fresh consumer numbers its deliveries 1, 2, 3...; a jump means a delivery never reached
    // us (a pull cut off mid-way) and applying past it would reorder the stream.
    let expectedDelivery = 1
    while (!abort.signal.aborted) {
      const pullStarted = performance.now()
      const batch = await pullBatch(consumer)
      if (batch.length === 0) continue
      const pulledMs = Math.round(performance.now() - pullStarted)
      for (const m of batch) {
        if (m.info.deliverySequence !== expectedDelivery) {
          throw new ResetConsumer(`delivery ${expectedDelivery} missing (got ${m.info.deliverySequence} for seq ${m.seq})`)
        }
        expectedDelivery++
      }
      // Delivery numbers only say that nothing the consumer sent was lost on the way (see
      // noSkipBefore): the batch's statement also waits for that check, asked beside its reads.
      const ready = batch[0].seq > checkpoint + 1 ? noSkipBefore(batch[0].seq) : undefined
      // Nothing stored after the last applied event can have expired while that event is younger
      // than the retention (half of it: the worker's clock is not the server's), so a runner that
      // keeps up never pays for the check.
      if (deps.retentionMs && Date.now() - lastStoredAt > deps.retentionMs / 2) await reportExpired(batch[0].seq)
      const started = performance.now()
      // Asked once per batch: its runs are published as they were committed (see PartitionDeps.changeFormat).
      const format = deps.changeFormat?.() ?? 'runs'
      enter('apply')
      const { result, headers } = await tracedBatch(batch, (trace) =>
        applyWithRetry(batch, format !== 'runs', trace, ready).catch((err) => {
          const m = batch[0]
          if (isRefusedBatch(err) || err instanceof ResetConsumer) throw err
          throw new FatalBatchError(err, { subject: m.subject, seq: m.seq, deliveryCount: m.info.deliveryCount })
        }),
      )
      if (!result) return // stopped while retrying: unacked messages go to the next owner
      deps.metrics.worker.batch(deps.projection.name, (performance.now() - started) / 1000, batch.length, result.deadLettered)
      // Messages that will never apply were written to dead letters: said once, with where they
      // were (a counter alone says neither which batch nor to look); not their reasons, which may
      // quote their data (GET /admin/dead-letters shows them).
      if (result.deadLettered > 0) {
        const first = batch[0]
        const last = batch[batch.length - 1]
        log.warn(
          { deadLettered: result.deadLettered, size: batch.length, subject: first.subject, seq: first.seq, lastSubject: last.subject, lastSeq: last.seq, deliveryCount: first.info.deliveryCount },
          'messages of the batch were written to dead letters; the partition goes on (GET /admin/dead-letters)',
        )
      }
      // What the consumer still holds after this batch's last message: the partition's lag (an
      // answer to a stalled try still on its way is older).
      setLag(batch[batch.length - 1].info.pending)
      checkpoint = result.checkpoint
      lastStoredAt = millis(batch[batch.length - 1].info.timestampNanos)
      await deps.hooks?.onBeforeAck?.({ projection: deps.projection.name, partition: deps.partition, seqs: batch.map((m) => m.seq) })
      // At most one batch's runs in flight: wait for the previous batch's (a channel's runs leave in
      // commit order, and a slow NATS slows the runner down instead of piling up).
      const waitStarted = performance.now()
      enter('publish')
      if (publishing) await publishing
      const publishWaitMs = Math.round(performance.now() - waitStarted)
      // From here to the next pull request nothing awaits: the runs, the ack and the pull are
      // issued in one turn, which nats.js flushes together.
      if (result.runs.length > 0 || result.events.length > 0) publishing = publishInBackground(result.runs, result.events, format, headers)
      // The consumer acks all: acking the batch's last message acks every earlier delivery.
      batch[batch.length - 1].ack()
      // Where a slow partition's time goes: the pull, the apply, the wait for the last batch's runs.
      const timing = { pulledMs, appliedMs: Math.round(waitStarted - started), publishWaitMs }
      log.debug({ size: batch.length, firstSeq: batch[0].seq, lastSeq: batch[batch.length - 1].seq, ...result, runs: result.runs.length, events: result.events.length, ...timing }, 'batch applied')
    }
  }

  /**
   * Events of this partition that retention deleted before they were applied (see
   * takeExpiredRange), found from `first`: the first sequence a fresh consumer can still deliver
   * (the stream's first), or a batch's first delivery, before it moves the checkpoint past them.
   * Logged once, where found.
   */
  const reportExpired = async (first: number) => {
    if (first <= checkpoint + 1) return
    const expired = await takeExpiredRange(deps.db, deps.projection.name, deps.partition, first)
    if (!expired) return
    deps.metrics.worker.expiredUnapplied(deps.projection.name)
    log.error(
      { ...expired, retentionMs: deps.retentionMs, nextSeq: first },
      'events of this partition were deleted by retention (FANFARE_EVENT_RETENTION_MS) before they were applied: they are lost to the read model (see GET /admin/projections)',
    )
  }

  /**
   * Applies a batch inside its span: a CONSUMER span linked to the context of every event that
   * carried one (a batch has many parents), parent of the Postgres statement's span. The first such
   * event's context is also its parent, so that the trace of a traced event goes on through the
   * worker to the push (and is sampled as that event was); a batch of untraced events is a root.
   * Returns the result with the headers that carry the span on to the batch's change runs (none
   * when the span is not sampled). With tracing off no header is looked at.
   *
   * `apply` gets the span's context to hand down (the statement's span is its child, sampled or
   * not, as the parent-based sampler decides). Only a sampled span is also made active, for the
   * `trace_id` of log lines written meanwhile: an AsyncLocalStorage store entered for every batch
   * cost the worker ~2 ms of CPU per 1,000 events with nothing sampled (bench/findings.md,
   * Observability end to end, 2026-11-30), and an unsampled trace's id leads nowhere.
   */
  const tracedBatch = <T>(batch: Delivery[], apply: (trace?: Context) => Promise<T>): Promise<{ result: T; headers?: MsgHdrs }> => {
    if (!isTracing()) return apply().then((result) => ({ result }))
    const links: Link[] = []
    let parent: Context = ROOT_CONTEXT
    for (const m of batch) {
      const link = linkOfNats(m.headers)
      if (!link) continue
      if (links.length === 0) parent = trace.setSpanContext(ROOT_CONTEXT, link.context)
      links.push(link)
    }
    const attributes = {
      'messaging.system': 'nats',
      'messaging.operation.type': 'process',
      'messaging.destination.name': deps.stream,
      'messaging.batch.message_count': batch.length,
      'fanfare.projection': deps.projection.name,
      'fanfare.partition': deps.partition,
    }
    const span = tracer.startSpan(`fanfare.batch ${deps.projection.name}`, { kind: SpanKind.CONSUMER, links, attributes }, parent)
    const ctx = trace.setSpan(parent, span)
    const applied = span.isRecording() ? context.with(ctx, () => apply(ctx)) : apply(ctx)
    return applied.then(
      (result) => {
        // Before end: an ended span is no longer recording, and would carry no header.
        const headers = natsHeadersOf(span)
        span.end()
        return { result, headers }
      },
      (err) => {
        span.setStatus({ code: SpanStatusCode.ERROR, message: errorMessageOf(err) })
        span.end()
        throw err
      },
    )
  }

  /**
   * Publishes a committed batch's runs while the runner goes on with the next batch; `publishing`
   * is set while they are in flight. A failure leaves the runs to the outbox sweeper.
   */
  let publishing: Promise<void> | undefined
  const publishInBackground = (runs: OutboxRun[], events: OutboxEvent[], format: ChangeFormat, headers?: MsgHdrs): Promise<void> => {
    const batches = format !== 'runs'
    if (batches && runs.length > 0) deps.onHistory?.(runs)
    return Promise.all([
      runs.length === 0
        ? 0
        : batches
          ? publishBatch({ publisher: deps.publisher, prefix: deps.prefix, partition: deps.partition, cleaner: deps.cleaner, compress: format === 'compressed' }, runs, headers)
          : publishRuns({ publisher: deps.publisher, prefix: deps.prefix, cleaner: deps.cleaner }, runs, headers),
      events.length > 0 ? publishEvents({ js: deps.js, prefix: deps.prefix, partitions: deps.partitions, cleaner: deps.cleaner }, events) : 0,
    ]).then(
      () => void (publishing = undefined),
      (err) => {
        publishing = undefined
        log.warn({ err, runs: runs.length }, 'publishing change runs failed; the outbox sweeper will retry')
      },
    )
  }

  // The event stream the current consumer reads, as `<name>@<created>` (see streamIdentity), and
  // the checkpoint as this runner last saw it: read when the consumer opened, then what its own
  // batches wrote (see applyBatch).
  let stream = ''
  let checkpoint = 0
  // When the event at the checkpoint was stored (ms since the epoch; 0: not known, as after a
  // consumer opened): see the expiry check in consumeFrom.
  let lastStoredAt = 0

  /**
   * Creates this ownership's consumer right after the checkpoint, read (and reset if the event
   * stream was recreated) by openCheckpoint.
   */
  const openConsumer = async (): Promise<Consumer> => {
    ;({ stream, checkpoint } = await openCheckpoint({ db: deps.db, jsm: deps.jsm, log }, deps.stream, deps.projection.name, deps.partition))
    lastStoredAt = 0
    // Events deleted while no runner held the partition (workers down, or the partition stalled):
    // the consumer below starts at the first stored one and would skip them without a word.
    if (deps.retentionMs) await reportExpired((await deps.jsm.streams.info(deps.stream)).state.first_seq)
    const created = await createOwnershipConsumer(deps.nc, deps.jsm, {
      stream: deps.stream,
      projection: deps.projection.name,
      partition: deps.partition,
      token,
      filter: subjects.projectionFilter(deps.prefix, deps.partition, deps.projection.area),
      checkpoint: deps.hooks?.consumerAfter?.({ projection: deps.projection.name, partition: deps.partition, checkpoint }) ?? checkpoint,
      batchSize: deps.batchSize,
    })
    const consumer = await deps.js.consumers.get(deps.stream, name!)
    // The server counted what waits to create it: the lag until the first delivery. Nothing is
    // held across a reset (what was delivered and not acked comes again from this consumer).
    setLag(created.pending)
    return consumer
  }

  const run = async () => {
    // While the consumer cannot be reopened: the lag before the first failed try, and when it began.
    let reset: (StallStart & { lag: number }) | undefined
    for (let attempt = 0; !abort.signal.aborted; ) {
      try {
        enter('consumer')
        if (!name) {
          token = await claimFence(deps.db, deps.projection.name, deps.partition)
          name = consumerName(deps.projection.name, deps.partition, token)
          log = log.child({ token })
        }
        const consumer = await openConsumer()
        attempt = 0
        reset = undefined
        await consumeFrom(consumer)
      } catch (err) {
        if (abort.signal.aborted) break
        if (err instanceof FencedError) {
          log.warn({ err: err.message }, 'a newer owner holds this partition; stopping')
          abort.abort()
          deps.onFenced()
          break
        }
        if (err instanceof FatalBatchError || err instanceof StreamChanged || isProgrammingError(err) || (isDbError(err) && !isTransientDbError(err))) {
          const cause = err instanceof FatalBatchError ? err.cause : err
          log.fatal({ err: cause, ...(err instanceof FatalBatchError ? err.first : {}) }, 'runner failed with an error retrying cannot fix')
          abort.abort()
          deps.onFatal(cause)
          break
        }
        // NATS trouble, a deleted consumer, a missed delivery, a recreated event stream, a checkpoint
        // moved by someone else, or Postgres down while reading the checkpoint: start over from the
        // checkpoint with a fresh consumer.
        log.warn({ err: err instanceof ResetConsumer ? err.message : err, attempt }, 'consumer reset')
        // Until the consumer is created again (whose creation counts what waits), the lag says what
        // waits, as while a batch is retried, and not the last applied batch's value, which showed
        // the partition as caught up: the value at the reset (what was held and not acked comes
        // again, so it still counts) plus what is stored since. Never a consumer info (see Runner.lag).
        reset ??= { lag: lagNow ?? 0 }
        stalledLag(reset.lag, reset)
        enter('backoff')
        await sleep(backoffMs(attempt++), abort.signal)
      }
    }
  }

  /**
   * Every WATCH_EVERY_MS: stops a pull past PULL_BOUND_MS (the consumer is then reset), and says
   * in a warning what the runner has waited LONG_STEP_MS for. Steps that wait on Postgres or a
   * reset's backoff say their own retries too; this one line is what says it for every step.
   */
  const pullBoundMs = deps.hooks?.pullBoundMs ?? PULL_BOUND_MS
  const watchSteps = setInterval(() => {
    if (abort.signal.aborted) return
    const waitedMs = Date.now() - stepSince
    if (step === 'pull' && pulling && waitedMs > pullBoundMs) {
      // When nats.js last heard from the pull (a heartbeat or status; its monitor's own field, read
      // only here): recent means the server kept it alive with heartbeats, never ending it.
      const heard = (pulling as unknown as { monitor?: { last?: unknown } }).monitor?.last
      const heardMsAgo = typeof heard === 'number' ? Date.now() - heard : undefined
      log.warn({ waitedMs, boundMs: pullBoundMs, heardMsAgo }, 'a pull was not ended by its expiry nor by missed heartbeats; stopping it and resetting the consumer')
      pulling.stop(new Error(`the pull was still open ${waitedMs} ms after its request (expiry ${IDLE_PULL_MS} ms)`))
      return
    }
    if (waitedMs < (stepSaid + 1) * LONG_STEP_MS) return
    stepSaid++
    log.warn({ waitingFor: step, waitedMs, lag: lagNow }, 'the runner has waited long on one step')
  }, Math.min(WATCH_EVERY_MS, pullBoundMs / 2))
  watchSteps.unref?.()

  const done = run().finally(() => clearInterval(watchSteps))
  return {
    replay,
    lag: () => ({
      projection: deps.projection.name,
      partition: deps.partition,
      consumer: name ?? null,
      lag: lagNow,
      at: lagAt?.toISOString() ?? null,
      waiting: abort.signal.aborted ? null : { for: step, since: new Date(stepSince).toISOString() },
    }),
    stop: async (opts = {}) => {
      abort.abort()
      clearInterval(watchSteps)
      pulling?.stop()
      await done
      await publishing
      lag.remove()
      if (opts.deleteConsumer && name) await deps.jsm.consumers.delete(deps.stream, name).catch(() => {})
    },
  }
}
