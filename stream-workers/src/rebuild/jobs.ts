import type { JetStreamClient } from '@nats-io/jetstream'
import type { KV } from '@nats-io/kv'
import type { NatsConnection } from '@nats-io/transport-node'
import type { Config } from '../../../core/config'
import type { Db } from '../../../core/db/client'
import type { Logger } from '../../../core/logger'
import type { Metrics } from '../../../core/metrics'
import { projectionNames } from '../../../core/projections'
import { openJobBucket, readRebuildJob, rebuildKey, type RebuildJob } from '../../../core/rebuild-jobs'
import type { Projection } from '../projections'
import { backoffMs, sleep } from '../../../core/backoff'
import { raiseFence, RebuildTakenOver } from './fence'
import { runRebuild, type RebuildHooks } from './rebuild'
import { dropSchemas, leftoverSchemas, rebuildSchemas, type RebuildSchema } from './shadow'
import { errorMessageOf } from '../runtime/errors'

export type RebuildJobsDeps = {
  config: Config
  db: Db
  nc: NatsConnection
  js: JetStreamClient
  logger: Logger
  workerId: string
  projections: readonly Projection[]
  /** How often the job keys are read; default 1 s. */
  pollMs?: number
  now?: () => Date
  /** The process's metrics (the shadow's statement timeouts). */
  metrics?: Metrics
  /** Test seams (see RebuildHooks); production passes none. */
  hooks?: RebuildHooks
}

/** The job was taken over by another worker (our compare-and-set lost): stop without writing. */
class JobLost extends Error {}

/**
 * Drops the shadow and retired schemas that no job may still use: those of jobs that failed or
 * finished, were replaced by a newer job, or of an attempt that is not the job's current one. A
 * rebuild drops its schemas when it ends, but that drop can fail too (Postgres unreachable at that
 * moment), and a leftover shadow keeps its projection's dead-letter replays refused (409
 * `rebuild_in_progress`, see rebuildsInProgress) until someone drops it.
 *
 * What is kept: the current attempt of every `running` or `switching` job, whatever its heartbeat
 * (a job that looks dead is taken over, and its new attempt drops its old schemas itself: a worker
 * only slow to heartbeat is not disturbed), the next attempt of a `requested` one (a claim we
 * read too early), and the retired schema of any attempt of such a job (its switch committed but
 * the job is not saved done yet: the takeover finds it and marks the job done). The schemas are listed before the jobs are read: a worker creates its shadow
 * only after its claim is stored, so a shadow we list belongs to a claim we then read. A shadow
 * is dropped only after its job's fence was raised past its attempt (see fence.ts).
 */
export async function dropOrphanSchemas(deps: { db: Db; kv: KV; logger: Logger }): Promise<string[]> {
  const schemas = await rebuildSchemas(deps.db)
  if (schemas.length === 0) return []
  const inUse = new Set<string>()
  const unfinished = new Set<string>()
  for (const name of projectionNames) {
    const job = (await readRebuildJob(deps.kv, name))?.job
    if (job?.state === 'running' || job?.state === 'switching') inUse.add(`${job.id}_${job.attempts}`)
    if (job?.state === 'requested') inUse.add(`${job.id}_${job.attempts + 1}`)
    if (job?.state === 'running' || job?.state === 'switching' || job?.state === 'requested') unfinished.add(job.id)
  }
  // A retired schema exists only once its switch committed: of a job not yet done, whatever the
  // attempt, it is how the job's takeover knows it switched already (see runRebuild).
  const kept = (s: RebuildSchema) => inUse.has(`${s.jobId}_${s.attempt}`) || (s.retired && unfinished.has(s.jobId))
  const dropped = schemas.filter((s) => !kept(s))
  const orphans = dropped.map((s) => s.name)
  if (orphans.length > 0) {
    // A shadow's builder may be slow, not dead: fenced off first (see fence.ts), its next
    // transaction writes nothing, instead of finding its schema gone mid-way.
    for (const s of dropped) if (!s.retired) await raiseFence(deps.db, s.jobId, s.attempt + 1)
    await dropSchemas(deps.db, orphans)
    deps.logger.warn({ schemas: orphans }, 'dropped schemas left by rebuilds that no longer run')
  }
  return orphans
}

/**
 * Runs requested projection rebuilds. Every `pollMs` reads the job key of each projection; a job
 * that is `requested`, or `running`/`switching` with a heartbeat older than 3 lease TTLs (at
 * least 5 s: its worker died), is claimed with a compare-and-set on the key's revision: one worker wins. The
 * winner heartbeats every TTL/3 with its progress, each write again a compare-and-set, so a worker
 * that was taken over notices and stops. Polling rather than a KV watch: a dead owner shows up
 * only as time passing, which needs a timer anyway, and two keys a second cost nothing.
 */
export function startRebuildJobs(deps: RebuildJobsDeps): { stop: () => Promise<void> } {
  const ttl = deps.config.FANFARE_LEASE_TTL_MS
  // A takeover restarts the rebuild from scratch: wait a few missed heartbeats before calling it dead.
  const staleMs = Math.max(3 * ttl, 5_000)
  const now = deps.now ?? (() => new Date())
  const log = deps.logger.child({ component: 'rebuild' })
  const abort = new AbortController()
  const running = new Map<string, Promise<void>>()
  let kv: KV | undefined

  const run = async (kv: KV, claimed: RebuildJob, revision: number) => {
    let job = claimed
    let rev = revision
    let lost = false
    // Writes go one at a time (heartbeat timer and progress both write), each a CAS on our revision.
    let chain: Promise<void> = Promise.resolve()
    const save = (patch: Partial<RebuildJob>) =>
      (chain = chain.then(async () => {
        if (lost) throw new JobLost()
        const next = { ...job, ...patch, heartbeatAt: now().toISOString() }
        for (let attempt = 0; ; attempt++) {
          try {
            rev = await kv.update(rebuildKey(job.projection), JSON.stringify(next), rev)
            break
          } catch (err) {
            // A failed write is no takeover by itself: with NATS away (a restart) the worker took it
            // for one, dropped its rebuild, and the job sat unowned until it looked dead, then
            // started again from scratch. What the key holds once NATS answers decides: the job is
            // still ours while it holds our attempt (a write that timed out may have been stored:
            // its revision is taken); another worker's claim means it was taken over.
            const stored = abort.signal.aborted ? null : await readRebuildJob(kv, job.projection).catch(() => 'unknown' as const)
            if (stored === 'unknown' || (stored && stored.job.id === job.id && stored.job.attempts === job.attempts && stored.job.owner === deps.workerId)) {
              if (stored !== 'unknown') rev = stored.revision
              log.warn({ err, rebuild: job.id }, 'writing the rebuild job failed; writing it again')
              await sleep(backoffMs(attempt), abort.signal)
              continue
            }
            lost = true
            log.warn({ err, rebuild: job.id }, 'rebuild job taken over by another worker; stopping')
            throw new JobLost()
          }
        }
        job = next
      }))
    const beat = setInterval(() => void save({}).catch(() => {}), Math.max(100, Math.floor(ttl / 3)))
    const projection = deps.projections.find((p) => p.name === job.projection)!
    // Earlier rebuilds' leftovers, of any projection (this one drops its own job's in runRebuild).
    await dropOrphanSchemas({ db: deps.db, kv, logger: log }).catch((err) => log.warn({ err }, 'could not drop the schemas of earlier rebuilds'))
    try {
      const { switchedAtSeq } = await runRebuild(
        {
          config: deps.config,
          db: deps.db,
          js: deps.js,
          logger: log,
          projection,
          now: deps.now,
          signal: abort.signal,
          metrics: deps.metrics,
          hooks: deps.hooks,
          progress: (p) => save({ appliedSeq: p.appliedSeq, pending: p.pending, ...(p.state ? { state: p.state } : {}) }),
        },
        { id: job.id, attempt: job.attempts },
      )
      deps.hooks?.afterSwitch?.({ id: job.id, attempt: job.attempts })
      clearInterval(beat)
      await save({ state: 'done', switchedAtSeq, pending: 0, finishedAt: now().toISOString() })
      log.info({ rebuild: job.id, switchedAtSeq }, 'rebuild done')
      // Only now: until the job is saved done, the retired schema is what tells a takeover that the
      // switch committed (see runRebuild). Not dropped here, it is an orphan (dropOrphanSchemas).
      await dropSchemas(deps.db, await leftoverSchemas(deps.db, job.id)).catch((err) => log.warn({ err, rebuild: job.id }, 'could not drop rebuild schemas'))
    } catch (err) {
      clearInterval(beat)
      if (lost || err instanceof JobLost) return
      if (err instanceof RebuildTakenOver) {
        // Our Postgres writes were fenced off by the new owner (see fence.ts); the job is its own.
        lost = true
        log.warn({ rebuild: job.id, attempt: job.attempts }, 'rebuild job taken over by another worker; stopping')
        return
      }
      if (abort.signal.aborted) {
        // Shutting down: hand the job back at once instead of letting it look dead for a TTL.
        await save({ state: 'requested', owner: undefined }).catch(() => {})
        return
      }
      log.error({ err, rebuild: job.id }, 'rebuild failed')
      await save({ state: 'failed', error: errorMessageOf(err), finishedAt: now().toISOString() }).catch(() => {})
    }
  }

  const scan = async () => {
    kv ??= await openJobBucket(deps.nc, deps.config)
    for (const projection of deps.projections) {
      if (running.has(projection.name) || abort.signal.aborted) continue
      const current = await readRebuildJob(kv, projection.name)
      if (!current) continue
      const { job, revision } = current
      const beat = job.heartbeatAt ? Date.parse(job.heartbeatAt) : 0
      const orphaned = (job.state === 'running' || job.state === 'switching') && now().getTime() - beat > staleMs
      if (job.state !== 'requested' && !orphaned) continue
      const claimed: RebuildJob = { ...job, state: 'running', owner: deps.workerId, heartbeatAt: now().toISOString(), attempts: job.attempts + 1, error: undefined }
      let rev: number
      try {
        rev = await kv.update(rebuildKey(projection.name), JSON.stringify(claimed), revision)
      } catch {
        continue // another worker claimed it first
      }
      log.info({ rebuild: job.id, projection: projection.name, attempt: claimed.attempts, takeover: orphaned }, 'rebuild claimed')
      const done = run(kv, claimed, rev).finally(() => running.delete(projection.name))
      running.set(projection.name, done)
    }
  }

  const loop = (async () => {
    // Once at start (and again before each rebuild this worker claims): what failed rebuilds left.
    try {
      kv ??= await openJobBucket(deps.nc, deps.config)
      await dropOrphanSchemas({ db: deps.db, kv, logger: log })
    } catch (err) {
      log.warn({ err }, 'could not drop the schemas of earlier rebuilds; the next rebuild tries again')
    }
    while (!abort.signal.aborted) {
      try {
        await scan()
      } catch (err) {
        log.warn({ err }, 'reading rebuild jobs failed; retrying')
      }
      await sleep(deps.pollMs ?? 1_000, abort.signal)
    }
  })()

  return {
    stop: async () => {
      abort.abort()
      await loop
      await Promise.all(running.values())
    },
  }
}
