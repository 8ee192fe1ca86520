import { randomBytes } from 'node:crypto'
import { hostname } from 'node:os'
import { jetstream } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import type { Config } from '../../core/config'
import type { Db } from '../../core/db/client'
import type { DatabaseWatch } from '../../core/db/watch'
import type { Logger } from '../../core/logger'
import { createMetrics, type Metrics } from '../../core/metrics'
import { ensureStreams, topology, untilJetStreamAnswers } from '../../core/nats'
import { watchChangeFormat } from './runtime/change-format-watch'
import { readStreamSettings } from '../../core/stream-settings'
import { createSubscriptionWatch, watchPublishDenials } from '../../core/nats-subscriptions'
import { createAckedPublisher } from '../../core/acked-publish'
import { slowCatchUpOf } from '../../core/nats-server-version'
import { projections as allProjections, type Projection } from './projections'
import { startUnclaimedPoller, type UnclaimedPoller } from './runtime/unclaimed'
import { UNCLAIMED } from '../../core/projections'
import { startRebuildJobs } from './rebuild/jobs'
import type { RebuildHooks } from './rebuild/rebuild'
import { openLeaseBucket, startLeases } from './runtime/leases'
import { startOutboxCleaner, startOutboxSweeper } from './runtime/outbox'
import { historyTouches, startHistoryPruner } from './runtime/history-pruner'
import { startRunner, type PartitionDeps, type Runner, type RunnerHooks } from './runtime/runner'
import { createBatchCommitter } from './runtime/committer'
import { startTopologyKeeper } from './runtime/topology-keeper'
import { answerReplays } from './runtime/replay'
import { answerLagQueries } from './runtime/lag'
import { checkCheckpointStream } from './runtime/stream-check'
import { startRetentionWatch } from '../../core/retention-watch'


export type WorkersDeps = {
  config: Config
  db: Db
  nc: NatsConnection
  logger: Logger
  /**
   * Called once when a runner hits an error retrying cannot fix (a bug). The workers keep the
   * other runners going; `main` exits non-zero. Default: log and exit the process with 1.
   */
  onFatal?: (err: unknown) => void
  /** Test seams; production passes none. */
  hooks?: RunnerHooks
  /** Test seams of the rebuilds this worker runs (see RebuildHooks). */
  rebuildHooks?: RebuildHooks
  /** Projections to run; default all. */
  projections?: readonly Projection[]
  now?: () => Date
  /** Test seam: how often the history pruner runs (live batches); default 10 s. */
  historyPruneMs?: number
  /** The process's metrics; a registry of its own when absent (tests). */
  metrics?: Metrics
  /**
   * The watch on this process's Postgres (see watchDatabase). With it, a worker whose Postgres does
   * not answer takes no partition, and gives up those it holds once it has not answered for
   * STAND_DOWN_TIMEOUTS x FANFARE_DATABASE_TIMEOUT_MS more: see standDownAfterMs.
   */
  database?: Pick<DatabaseWatch, 'answering' | 'unansweredFor'>
  /** How often the change streams are read for a switch of their change format (see watchChangeFormat); default 5 s. */
  changeFormatWatchMs?: number
}

/**
 * A worker that lost its path to Postgres but not to NATS kept its leases, and its partitions were
 * applied by no one while the other workers could. It gives them up once Postgres has not answered
 * for this many FANFARE_DATABASE_TIMEOUT_MS after the watch noticed (which itself takes one): about
 * 3 x 5 s = 15 s after the path broke at the defaults. Long enough that a Postgres restart or a
 * short blip moves nothing; a stall past it moves the partitions once (within a lease scan of the
 * release), and they come back by the usual rebalance once Postgres answers.
 */
export const STAND_DOWN_TIMEOUTS = 2

/** How long after the watch noticed an unanswering Postgres a worker gives its partitions up. */
export const standDownAfterMs = (config: Pick<Config, 'FANFARE_DATABASE_TIMEOUT_MS'>) => STAND_DOWN_TIMEOUTS * config.FANFARE_DATABASE_TIMEOUT_MS

export type Workers = {
  workerId: string
  /** Partitions this worker holds now. */
  partitions: () => number[]
  /**
   * Stops taking new work, lets in-flight batches commit, ack and publish, then releases the
   * leases and stops the outbox sweeper and cleaner; a rebuild in progress is handed back (state requested).
   * Safe to call twice.
   */
  stop: () => Promise<void>
}

/**
 * Starts the stream workers of this process: ensures the streams (and keeps them: see
 * startTopologyKeeper), joins the partition leases, runs one runner per projection on each owned
 * partition, and sweeps the outbox.
 */
export async function startWorkers(deps: WorkersDeps): Promise<Workers> {
  const { db, nc } = deps
  const t = topology(deps.config)
  const workerId = `${hostname()}-${process.pid}-${randomBytes(4).toString('hex')}`
  const logger = deps.logger.child({ workerId })
  // Said at start, where an operator looks: otherwise a partition crawling after a restart looks
  // like a stuck worker (see slowCatchUpOf).
  const slowCatchUp = slowCatchUpOf(nc.info?.version)
  if (slowCatchUp) logger.warn({ natsServer: nc.info?.version }, slowCatchUp)
  await checkCheckpointStream(db, t.eventStream)
  const { jsm, config, recorded, kv } = await untilJetStreamAnswers(
    async () => {
      const jsm = await ensureStreams(nc, deps.config)
      // The retention the runners and the retention watch check against is the event stream's, not this process's env.
      const { config, changes: recorded } = await readStreamSettings(jsm, deps.config, logger)
      return { jsm, config, recorded, kv: await openLeaseBucket(nc, config) }
    },
    { url: deps.config.NATS_URL ?? '', warn: (message) => logger.warn(message) },
  )
  const js = jetstream(nc)
  const publisher = createAckedPublisher(nc)
  const changeFormat = await watchChangeFormat({ nc, jsm, config, recorded, logger: logger.child({ component: 'change-format' }), intervalMs: deps.changeFormatWatchMs })
  const projections = deps.projections ?? allProjections
  const metrics = deps.metrics ?? createMetrics()
  let fatalReported = false
  const onFatal = (err: unknown) => {
    if (fatalReported) return
    fatalReported = true
    if (deps.onFatal) return deps.onFatal(err)
    logger.fatal({ err }, 'stream worker failed; exiting')
    process.exit(1)
  }

  const runners = new Map<number, Runner[]>()
  // The holder of partition 0's lease also looks for messages no projection consumes (see
  // startUnclaimedPoller), so that one process does, fenced like the runners.
  let unclaimed: UnclaimedPoller | undefined
  const stopRunners = async (partition: number, deleteConsumer: boolean) => {
    const rs = runners.get(partition)
    runners.delete(partition)
    const poller = partition === 0 ? unclaimed : undefined
    if (poller) unclaimed = undefined
    await Promise.all([...(rs ?? []).map((r) => r.stop({ deleteConsumer })), poller?.stop()])
  }

  const cleaner = startOutboxCleaner({ db, logger: logger.child({ component: 'outbox' }) })
  // One per projection: the partitions of a projection held here commit their batches together.
  const committers = new Map(
    projections.map((p) => {
      const onGroupCommit = deps.hooks?.onGroupCommit
      const onGroup = onGroupCommit && ((partitions: number[]) => onGroupCommit({ projection: p.name, partitions }))
      const onTimeout = () => metrics.worker.timedOut(p.name)
      return [p.name, createBatchCommitter({ db, logger: logger.child({ component: 'committer', projection: p.name }), onGroup, onTimeout })]
    }),
  )
  // Live batches: the channels the runners wrote history for, pruned at the pruner's next round.
  const touched = historyTouches()
  // What every partition's runners and the catch of unclaimed messages are given alike.
  const partitionDeps: PartitionDeps = {
    db,
    jsm,
    logger,
    stream: t.eventStream,
    prefix: t.prefix,
    partitions: t.partitions,
    batchSize: config.FANFARE_BATCH_SIZE,
    now: deps.now,
    hooks: deps.hooks,
    onFatal,
    metrics,
    changeFormat: changeFormat.format,
    onHistory: (runs) => touched.add(runs),
  }
  const leases = startLeases({
    kv,
    workerId,
    partitions: t.partitions,
    ttlMs: config.FANFARE_LEASE_TTL_MS,
    logger: logger.child({ component: 'leases' }),
    able: () => {
      const database = deps.database
      if (!database || database.answering()) return 'yes'
      return database.unansweredFor() >= standDownAfterMs(config) ? 'out' : 'no'
    },
    onAcquired: (partition) => {
      if (partition === 0) {
        unclaimed = startUnclaimedPoller({ ...partitionDeps, intervalMs: config.FANFARE_UNCLAIMED_POLL_MS, onFenced: () => leases.drop(0) })
      }
      runners.set(
        partition,
        projections.map((projection) =>
          startRunner({
            ...partitionDeps,
            nc,
            js,
            publisher,
            projection,
            partition,
            cleaner,
            committer: committers.get(projection.name),
            onFenced: () => leases.drop(partition),
            retentionMs: config.FANFARE_EVENT_RETENTION_MS,
          }),
        ),
      )
    },
    // The new owner deletes our consumer; stopping must not wait for anything.
    onLost: (partition) => void stopRunners(partition, false),
    onRelease: (partition) => stopRunners(partition, true),
  })
  // Dead-letter replays go to the runner that owns the partition, between its batches.
  const subscriptions = createSubscriptionWatch({ nc, logger })
  metrics.nats.watchDenied(subscriptions.denied)
  const publishDenials = watchPublishDenials({ nc, prefix: t.prefix, logger, count: metrics.nats.publishDenied })
  const replays = answerReplays({
    subscriptions,
    prefix: t.prefix,
    runnerOf: (name, partition) => (name === UNCLAIMED ? (partition === 0 ? unclaimed : undefined) : runners.get(partition)?.[projections.findIndex((p) => p.name === name)]),
  })
  // GET /admin/projections asks the workers for their partitions' lag (see core/projection-lag.ts).
  const lags = answerLagQueries({ subscriptions, prefix: t.prefix, workerId, runners: () => [...runners.values()].flatMap((rs) => rs.map((r) => r.lag())) })
  const sweeper = startOutboxSweeper({ db, js, prefix: t.prefix, partitions: t.partitions, logger: logger.child({ component: 'outbox' }) })
  // With live batches channel history lives in change_history, kept to the configured size (a
  // deployment from before them has none: a prune finds nothing).
  const pruner = startHistoryPruner({ db, config, logger: logger.child({ component: 'history' }), touched, intervalMs: deps.historyPruneMs, now: deps.now })
  const keeper = startTopologyKeeper({ nc, config, logger: logger.child({ component: 'topology' }) })
  // Any worker may run a requested rebuild (POST /admin/projections/:name/rebuild).
  const rebuilds = startRebuildJobs({ config, db, nc, js, logger, workerId, projections, now: deps.now, metrics, hooks: deps.rebuildHooks })
  // Witnesses unapplied events for the runners' expiry check, and gauges their age (retention set).
  const retention = startRetentionWatch({ config, db, nc, logger, metrics, projections })
  logger.info({ partitions: t.partitions, projections: projections.map((p) => p.name) }, 'stream workers started')

  let stopping: Promise<void> | undefined
  return {
    workerId,
    partitions: () => leases.held(),
    stop: () =>
      (stopping ??= (async () => {
        replays.stop()
        lags.stop()
        subscriptions.stop()
        publishDenials.stop()
        await retention.stop()
        await rebuilds.stop()
        await leases.stop()
        await Promise.all([...runners.keys()].map((p) => stopRunners(p, true)))
        await sweeper.stop()
        await pruner.stop()
        await changeFormat.stop()
        // After the runners, which wait for their batches' publishes.
        publisher.close()
        await cleaner.stop()
        await keeper.stop()
        logger.info('stream workers stopped')
      })()),
  }
}
