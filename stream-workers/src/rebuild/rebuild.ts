import type { JetStreamClient } from '@nats-io/jetstream'
import type { Config } from '../../../core/config'
import type { Db } from '../../../core/db/client'
import type { Logger } from '../../../core/logger'
import type { Metrics } from '../../../core/metrics'
import { backoffMs, sleep } from '../../../core/backoff'
import { topology } from '../../../core/nats'
import type { Projection } from '../projections'
import { catchUp } from './catch-up'
import { raiseFence, RebuildTakenOver } from './fence'
import { committedSwitch, createShadow, dropSchemas, jobSwitch, leftoverSchemas, retiredSchemaName, shadowSchemaName } from './shadow'
import { openShadowBuild } from './shadow-build'
import { isSwitchInterrupted, switchOnce } from './switch'

export type RebuildDeps = {
  /** The event stream, subject prefix, partitions and batch size come from here (see topology). */
  config: Config
  db: Db
  js: JetStreamClient
  logger: Logger
  projection: Projection
  now?: () => Date
  /**
   * Called after each shadow batch, and once with state 'switching' just before the switch;
   * throwing stops the rebuild (the job was taken over by another worker).
   */
  progress: (p: { appliedSeq: number; pending: number; state?: 'switching' }) => Promise<void>
  signal: AbortSignal
  /** The process's metrics: the shadow's statement timeouts count with the live ones. */
  metrics?: Metrics
  /** Test seams; production passes none. */
  hooks?: RebuildHooks
}

/**
 * Test seams: called at points of a rebuild, so a test can make its worker slow there (or die).
 * Production passes none.
 */
export type RebuildHooks = {
  /** The job was saved `switching`; the switch's transaction has not begun. */
  beforeSwitch?: () => Promise<void>
  /** In the switch's transaction, everything written and its locks held, just before COMMIT. */
  beforeSwitchCommit?: () => Promise<void>
  /** The switch committed; the job is not saved `done` yet (see startRebuildJobs). */
  afterSwitch?: (job: { id: string; attempt: number }) => void
}

/**
 * Switches that fail in a row on something that passes (see runRebuild) before the job fails.
 * Each is rolled back, and followed by a backoff and a catch-up (which itself waits up to about a
 * minute for NATS): enough for a NATS or Postgres restart, not for a switch that never fits.
 */
const SWITCH_ATTEMPTS = 10

/**
 * Rebuilds one projection from the first event of the stream into a shadow schema while the live
 * runners go on (catchUp), then switches it in in one transaction (switchOnce), so live runners
 * skip exactly what the shadow applied. Returns the position switched at. Drops its shadow schema
 * whatever happens.
 *
 * A switch that fails on something that passes (a NATS call in it failed: NATS restarting; a
 * transient Postgres error, statement_timeout included) is rolled back and tried again after a
 * backoff and a catch-up, up to SWITCH_ATTEMPTS in a row; a switch that committed though its
 * answer was lost is found (committedSwitch) and never done twice. Any other error fails at once.
 *
 * A switch of an earlier attempt of the job that committed (its worker died before the job was
 * saved done) is found first (jobSwitch): its position is returned, nothing rebuilt or switched.
 * The retired schema of a switch is left to the caller, to drop once the job is saved done.
 *
 * The attempt raises the job's fence first, and each of its transactions holds it (see fence.ts):
 * once a later attempt took the job over (this worker only slow), it throws RebuildTakenOver,
 * having written nothing more and switched nothing; the job is the new owner's.
 */
export async function runRebuild(deps: RebuildDeps, job: { id: string; attempt: number }): Promise<{ switchedAtSeq: number }> {
  const { db, projection } = deps
  const { eventStream, partitions } = topology(deps.config)
  const batchSize = deps.config.FANFARE_BATCH_SIZE
  const log = deps.logger.child({ projection: projection.name, rebuild: job.id, attempt: job.attempt })
  const shadow = shadowSchemaName(job.id, job.attempt)
  const retired = retiredSchemaName(job.id, job.attempt)
  // The job is ours in Postgres from now on: an earlier attempt still writing (its worker only
  // slow) is fenced off, and a switch of it under way is waited for, so jobSwitch below sees it.
  const fence = await raiseFence(db, job.id, job.attempt)
  if (fence !== job.attempt) throw new RebuildTakenOver(job, fence)
  // An earlier attempt switched in, and its worker died before the job was saved done: the job is
  // done at that switch. Rebuilding would switch a second time (every channel re-synced twice).
  const earlier = await jobSwitch(db, job.id)
  if (earlier) {
    log.warn({ retired: earlier.retired, switchedAt: earlier.switchedAtSeq }, 'an earlier attempt of this rebuild switched in already; not rebuilding again')
    return { switchedAtSeq: earlier.switchedAtSeq }
  }
  // A takeover restarts from scratch; earlier attempts' schemas are garbage (none switched in, and
  // the fence stops their builders). A later attempt's are not ours to drop: it took the job over.
  await dropSchemas(db, await leftoverSchemas(db, job.id, job.attempt))
  await createShadow(db, shadow, projection.name)
  try {
    const jsm = await deps.js.jetstreamManager()
    const build = await openShadowBuild({ config: deps.config, js: deps.js, jsm, logger: log, projection, now: deps.now ?? (() => new Date()), metrics: deps.metrics }, shadow, job)
    const switchDeps = { db, jsm, eventStream, projection: projection.name, partitions, batchSize, build, retired, logger: log, beforeCommit: deps.hooks?.beforeSwitchCommit }
    // A switch that fails on something that passes (NATS restarting, statement_timeout, a lost
    // connection, a deadlock) is rolled back, live untouched and its locks released, and tried
    // again after a backoff and a catch-up (live went on meanwhile): a routine NATS restart no
    // longer costs the rebuild. Anything else fails the job at once, as do SWITCH_ATTEMPTS in a row.
    for (let failures = 0; ; ) {
      await catchUp({ db, build, batchSize, logger: log, progress: deps.progress, signal: deps.signal })
      await deps.progress({ appliedSeq: build.position, pending: 0, state: 'switching' })
      if (deps.signal.aborted) throw new Error('rebuild stopped')
      await deps.hooks?.beforeSwitch?.()
      const before = build.mark()
      try {
        return { switchedAtSeq: await switchOnce(switchDeps) }
      } catch (err) {
        // The tail the switch applied was rolled back with it: the shadow is where it was, and the
        // consumer past it.
        build.rollBack(before)
        build.reopen()
        const { sizes, parts } = build
        if (parts.last > 0 && sizes.failed(err, parts.last) === 'split') log.warn({ err, size: parts.last, nextSize: sizes.next(parts.last) }, 'a shadow statement of the switch outlasts statement_timeout; smaller parts from now on')
        if (!isSwitchInterrupted(err)) throw err
        // Before a catch-up writes the shadow again: did the switch commit all the same (its
        // answer lost)? The shadow's tables would be live ones now.
        const committed = await untilAnswered(() => committedSwitch(db, retired), err, deps.signal)
        if (committed !== undefined) {
          log.warn({ err, switchedAt: committed }, 'the switch committed though its answer was lost')
          return { switchedAtSeq: committed }
        }
        if (++failures >= SWITCH_ATTEMPTS) throw err
        log.warn({ err, failures }, 'the switch failed and was rolled back (live untouched); trying it again')
        await sleep(backoffMs(failures), deps.signal)
      }
    }
  } finally {
    // The retired schema (it exists only if the switch committed) stays until the job is saved
    // done (see startRebuildJobs): a takeover before that recognises the switch by it.
    await dropSchemas(db, [shadow]).catch((err) => log.warn({ err }, 'could not drop rebuild schemas'))
  }
}

/** What Postgres says once it answers again (a few tries); still unanswered, `err` fails the job. */
async function untilAnswered<T>(read: () => Promise<T>, err: unknown, signal: AbortSignal): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await read()
    } catch {
      if (attempt >= 10 || signal.aborted) throw err
      await sleep(backoffMs(attempt), signal)
    }
  }
}
