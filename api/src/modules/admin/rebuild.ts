import { randomBytes } from 'node:crypto'
import { jetstreamManager } from '@nats-io/jetstream'
import type { KV } from '@nats-io/kv'
import type { NatsConnection } from '@nats-io/transport-node'
import type { Config } from '../../../../core/config'
import { and, eq, ne } from 'drizzle-orm'
import type { Db, Tx } from '../../../../core/db/client'
import { projectionCheckpoints } from '../../../../core/db/schema'
import { topology } from '../../../../core/nats'
import { projectionNames, UNCLAIMED } from '../../../../core/projections'
import { isActive, isRebuildable, openJobBucket, readRebuildJob, rebuildKey, type RebuildJob } from '../../../../core/rebuild-jobs'
import { AppError, Conflict, databaseUnavailable, NotFound, Unavailable } from '../../errors'
import { errorMessageOf } from '../../../../core/db/errors'

/** Requests and reads projection rebuilds (run by the stream workers, see stream-workers/src/rebuild). */
export type Rebuilds = {
  /**
   * Writes a `requested` job for the projection. 404 unknown projection (`unclaimed` too, with why: it is no read model); 409 `rebuild_in_progress`
   * while one is requested or running; 409 `history_incomplete` unless `force` when the event
   * stream no longer starts at sequence 1 (retention removed events), or when the read model holds
   * events of an earlier incarnation of the stream (NATS lost its data; see `lost_stream`).
   *
   * `record` writes the request's audit entry in a Postgres transaction that commits only after
   * the job is stored: an entry that cannot be written requests nothing (the error passes, 503
   * `database_unavailable`). The job lives in NATS, outside that transaction: if the COMMIT fails
   * after the job was stored, the job is taken back (compare-and-set on its revision) and the error
   * passes; only if a worker claimed it first does the job stand unrecorded, and then `recorded`
   * is false (the caller records it another way). Before, the entry was written after the job, and
   * a repeat of a request whose entry failed was 409 `rebuild_in_progress`: recorded nowhere.
   */
  request: (
    projection: string,
    opts: { force: boolean; record: (tx: Tx, job: RebuildJob) => Promise<void> },
  ) => Promise<{ job: RebuildJob; recorded: boolean }>
  /** The projection's latest job; 404 when none was ever requested. */
  get: (projection: string) => Promise<RebuildJob>
  /** Every projection's latest job, in projection order; projections never rebuilt have none. */
  list: () => Promise<RebuildJob[]>
}

export function createRebuilds({ config, nc, db }: { config: Config; nc: NatsConnection; db: Db }): Rebuilds {
  let kv: KV | undefined
  const { eventStream } = topology(config)
  const checkName = (projection: string) => {
    if (projection === UNCLAIMED) {
      throw new NotFound(
        'unknown_projection',
        `${UNCLAIMED} is the catch of messages on subjects no projection consumes (see unclaimed in GET /admin/projections), not a read model: there is nothing to rebuild; its dead letters are at GET /admin/dead-letters`,
        { projections: projectionNames },
      )
    }
    if (!isRebuildable(projection)) {
      throw new NotFound('unknown_projection', `no projection ${JSON.stringify(projection)}`, { projections: projectionNames })
    }
    return projection
  }
  // NATS trouble is 503; Postgres down is 503 database_unavailable, as on every route; our own errors pass through.
  const guard = async <T>(what: string, f: () => Promise<T>): Promise<T> => {
    try {
      return await f()
    } catch (err) {
      if (err instanceof AppError) throw err
      const db = databaseUnavailable(err)
      if (db) throw db
      kv = undefined
      throw new Unavailable(`cannot ${what}: ${errorMessageOf(err)}`)
    }
  }
  const bucket = async () => (kv ??= await openJobBucket(nc, config))

  return {
    request: (name, { force, record }) =>
      guard('request the rebuild', async () => {
        const projection = checkName(name)
        const jsm = await jetstreamManager(nc)
        const { state } = await jsm.streams.info(eventStream)
        if (state.first_seq > 1 && !force) {
          throw new Conflict(
            'history_incomplete',
            `the event stream starts at sequence ${state.first_seq}: older events are gone (FANFARE_EVENT_RETENTION_MS), so a rebuild would be partial; add ?force=true to rebuild from what is left`,
            { firstSeq: state.first_seq },
          )
        }
        const [lost] = await db
          .select({ stream: projectionCheckpoints.lostStream })
          .from(projectionCheckpoints)
          .where(and(eq(projectionCheckpoints.projection, projection), ne(projectionCheckpoints.lostStream, '')))
          .limit(1)
        if (lost && !force) {
          throw new Conflict(
            'history_incomplete',
            `the read model holds events of ${lost.stream}, an earlier event stream that NATS lost: a rebuild from the current stream would drop them; add ?force=true to rebuild from what is left`,
            { lostStream: lost.stream },
          )
        }
        const kv = await bucket()
        const current = await readRebuildJob(kv, projection)
        const inProgress = (job: RebuildJob) =>
          new Conflict('rebuild_in_progress', `a rebuild of ${projection} is already ${job.state}`, { id: job.id, state: job.state })
        if (current && isActive(current.job.state)) throw inProgress(current.job)
        const job: RebuildJob = {
          id: randomBytes(6).toString('hex'),
          projection,
          state: 'requested',
          requestedAt: new Date().toISOString(),
          force,
          attempts: 0,
          appliedSeq: 0,
          pending: 0,
        }
        const key = rebuildKey(projection)
        let stored: number | undefined
        try {
          await db.transaction(async (tx) => {
            await record(tx, job)
            try {
              // Compare-and-set: of two concurrent requests, one wins and the other is 409.
              stored = current ? await kv.update(key, JSON.stringify(job), current.revision) : await kv.create(key, JSON.stringify(job))
            } catch {
              const winner = await readRebuildJob(kv, projection)
              throw inProgress(winner?.job ?? { ...job, state: 'requested' })
            }
          })
        } catch (err) {
          if (stored === undefined) throw err
          // The job is stored but its entry's COMMIT failed: take the job back, unless a worker
          // claimed it already (the compare-and-set fails) or NATS does not answer.
          const withdrawn = await (current ? kv.update(key, JSON.stringify(current.job), stored) : kv.delete(key, { previousSeq: stored })).then(
            () => true,
            () => false,
          )
          if (withdrawn) throw err
          return { job, recorded: false }
        }
        return { job, recorded: true }
      }),
    get: (name) =>
      guard('read the rebuild job', async () => {
        const projection = checkName(name)
        const current = await readRebuildJob(await bucket(), projection)
        if (!current) throw new NotFound('no_rebuild', `no rebuild of ${projection} was requested`)
        return current.job
      }),
    list: () =>
      guard('read the rebuild jobs', async () => {
        const kv = await bucket()
        const jobs = await Promise.all(projectionNames.map((projection) => readRebuildJob(kv, projection)))
        return jobs.flatMap((current) => (current ? [current.job] : []))
      }),
  }
}
