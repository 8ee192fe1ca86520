import type { JsMsg } from '@nats-io/jetstream'
import type { Db } from '../../../core/db/client'
import type { Logger } from '../../../core/logger'
import { backoffMs, sleep } from '../../../core/backoff'
import { dbErrorSummary, isDataDbError, isTransientDbError, StaleReadError } from '../runtime/errors'
import type { ShadowBuild } from './shadow-build'

export type CatchUpDeps = {
  db: Db
  build: ShadowBuild
  /** The live runners' batch size: the catch-up ends once what is left fits in about one. */
  batchSize: number
  logger: Logger
  /** Called after each fetch with the shadow's position and what is left to read; throwing stops the catch-up. */
  progress: (p: { appliedSeq: number; pending: number }) => Promise<void>
  signal: AbortSignal
}

/** Fetches that fail in a row (about a minute of backoffs: NATS gone for good, the stream deleted) before the catch-up fails. */
const FETCH_FAILURES = 15

/**
 * Applies the stream to the shadow, one fetch per transaction, while live traffic continues, until
 * what is left fits in about one live batch (the switch applies that under its locks). Bigger
 * batches than the live runners': the per-statement cost dominates, and the shadow must outrun
 * live traffic to ever reach the switch.
 *
 * A fetch's transaction that fails wrote nothing and is applied again from the same checkpoints:
 * careful (see ShadowBuild.apply) after Postgres refused its data; after a backoff on a stale read
 * or a transient error, in smaller parts after a second statement_timeout (see PartSize). Any
 * other error, or an abort, fails the catch-up.
 */
export async function catchUp(deps: CatchUpDeps): Promise<void> {
  const { db, build, logger: log } = deps
  const catchUpBatch = Math.min(5_000, Math.max(deps.batchSize, 1_000))
  for (let failures = 0; ; ) {
    if (deps.signal.aborted) throw new Error('rebuild stopped')
    let batch: JsMsg[]
    try {
      batch = await build.fetch(catchUpBatch, 1_000)
      failures = 0
    } catch (err) {
      if (failures >= FETCH_FAILURES) throw err
      log.warn({ err, position: build.position }, 'reading the event stream failed (NATS restarted?); reading again after the last event applied')
      await sleep(backoffMs(failures++), deps.signal)
      build.reopen()
      continue
    }
    if (batch.length > 0) await applyFetch(deps, batch)
    const pending = batch.length > 0 ? batch[batch.length - 1].info.pending : 0
    await deps.progress({ appliedSeq: build.position, pending })
    if (pending < deps.batchSize) return
  }
}

/** One fetch into the shadow, in its own transaction, tried again until it commits (see catchUp). */
async function applyFetch(deps: CatchUpDeps, batch: JsMsg[]): Promise<void> {
  const { db, build, logger: log } = deps
  const { sizes, parts } = build
  const before = build.mark()
  for (let attempt = 0, careful = false; ; ) {
    try {
      parts.done = 0
      const done = await db.transaction(async (tx) => {
        await build.enter(tx)
        return build.apply(tx, batch, careful)
      })
      // Only now: parts rolled back with a later one did not commit (a timeout after them
      // would otherwise never count twice in a row, and the fetch would never be split).
      for (const n of done) sizes.committed(n)
      return
    } catch (err) {
      build.rollBack(before)
      if (!careful && isDataDbError(err)) {
        // Postgres refused the data of a message of the fetch: the transaction wrote
        // nothing; apply the fetch again, careful (see ShadowBuild.apply).
        log.warn({ err: dbErrorSummary(err) }, 'Postgres refused a shadow batch for its data; applying the fetch again, each statement in a savepoint')
        careful = true
        continue
      }
      // A board's rules changed under a batch that scores it first (see Applied.recheck), or
      // a deadlock or lost connection: the transaction wrote nothing; apply the batch again
      // from the same checkpoints.
      if (!(err instanceof StaleReadError) && !isTransientDbError(err)) throw err
      // Canceled for statement_timeout: the fetch's transaction wrote nothing, and it is
      // applied again from the same checkpoints, in smaller parts after a second cancel.
      const timeout = sizes.failed(err, parts.last)
      if (timeout === 'split') log.warn({ err, size: parts.last, nextSize: sizes.next(parts.last) }, 'a shadow statement outlasts statement_timeout; applying the fetch again in smaller parts')
      else if (timeout === 'alone') log.error({ err, size: parts.last }, 'one event alone outlasts statement_timeout: the rebuild is stalled until statement_timeout is raised or the database is faster; retrying it')
      else log.warn({ err, size: parts.last }, 'shadow batch not written; applying it again')
      // Statements of this attempt went through before the one that failed: the database is
      // moving (parts that fit), and the next attempt starts a fresh backoff, as a live
      // runner's next part does. Without it, the attempts at the sizes that fit waited up to
      // 5 s each, the backoff grown by the cancels that taught the size.
      if (parts.done > 0) attempt = 0
      await sleep(backoffMs(attempt++), deps.signal)
      if (deps.signal.aborted) throw new Error('rebuild stopped')
    }
  }
}
