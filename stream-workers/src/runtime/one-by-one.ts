import type { Db } from '../../../core/db/client'
import { applyBatch, type ApplyOptions, type BatchMessage, type BatchOwner, type BatchResult } from './batch'
import { dbErrorSummary, isDataDbError } from './errors'

/** How applyOrOneByOne and applyOneByOne run their statements (every member optional). */
export type OneByOne = {
  /**
   * Runs one statement that Postgres may refuse so that its failure leaves the caller's
   * transaction usable. The rebuild and a dead-letter replay, whose statements share one
   * transaction, pass a savepoint (`tx.transaction`): a failed statement aborts the whole
   * transaction otherwise. By default it runs on `db`, where the statement commits by itself (the
   * live runner).
   */
  isolate?: <T>(run: (db: Db) => Promise<T>) => Promise<T>
  /**
   * Runs the work of the whole batch and of each message (the live runner: in its turn with
   * dead-letter replays, moving its checkpoint). By default it just runs it.
   */
  turn?: (work: () => Promise<BatchResult>) => Promise<BatchResult>
  /** Runs the whole batch's statement instead of applyBatch (the live runner: its group committer). */
  whole?: (db: Db) => Promise<BatchResult>
  /** Options of every statement (a dead-letter replay: ApplyOptions.replay). */
  opts?: ApplyOptions
  /** Told that Postgres refused the whole batch for its data, before it goes one by one. */
  onFallback?: (err: unknown) => void
  /** Told of each message Postgres refused, before it is written as a dead letter. */
  onRefused?: (m: BatchMessage, reason: string, err: unknown) => void
}

/**
 * Applies a batch (applyBatch, or `how.whole`); if Postgres refuses it for its data (see
 * isDataDbError), applies its messages one by one (applyOneByOne), so that the one it refuses is a
 * dead letter and the others apply. Retrying the batch whole would fail alike forever, and
 * stopping would make the next owner (or the next rebuild) stop on it too. Every other error is
 * thrown as it came. The live runners, the rebuild's shadow and dead-letter replays all go through
 * here, so a message Postgres refuses is a dead letter (or a replay still failing) in all three.
 */
export async function applyOrOneByOne(db: Db, owner: BatchOwner, expected: number, messages: BatchMessage[], now: () => Date, how: OneByOne = {}): Promise<BatchResult> {
  const { isolate = (run) => run(db), turn = (work) => work() } = how
  try {
    return await turn(() => isolate((d) => (how.whole ? how.whole(d) : applyBatch(d, owner, expected, messages, now(), how.opts))))
  } catch (err) {
    if (!isDataDbError(err)) throw err
    how.onFallback?.(err)
    return applyOneByOne(db, owner, expected, messages, now, how)
  }
}

/**
 * Applies messages one at a time, each its own statement, in stream order: the messages Postgres
 * takes apply, and one it refuses for its data is written as a dead letter with Postgres' reason
 * (ApplyOptions.refusedByPostgres) in its own statement, which moves the checkpoint past it (a
 * replay: records it as still failing with that reason). Returns the statements' results as one.
 */
export async function applyOneByOne(db: Db, owner: BatchOwner, expected: number, messages: BatchMessage[], now: () => Date, how: OneByOne = {}): Promise<BatchResult> {
  const { isolate = (run) => run(db), turn = (work) => work(), opts = {} } = how
  const total: BatchResult = { applied: 0, skipped: 0, deadLettered: 0, runs: [], events: [], checkpoint: expected }
  for (const m of messages) {
    const result = await turn(async () => {
      try {
        return await isolate((d) => applyBatch(d, owner, total.checkpoint, [m], now(), opts))
      } catch (err) {
        if (!isDataDbError(err)) throw err
        const reason = `Postgres refused it: ${dbErrorSummary(err)}`
        how.onRefused?.(m, reason, err)
        return applyBatch(db, owner, total.checkpoint, [m], now(), { ...opts, refusedByPostgres: { seq: m.seq, reason } })
      }
    })
    addResult(total, result)
  }
  return total
}

/** Adds the result of a statement to `total`, the result of the statements before it (in stream order). */
export function addResult(total: BatchResult, result: BatchResult): void {
  total.applied += result.applied
  total.skipped += result.skipped
  total.deadLettered += result.deadLettered
  total.runs.push(...result.runs)
  total.events.push(...result.events)
  total.checkpoint = result.checkpoint
  if (result.stillFailing !== undefined) total.stillFailing = [total.stillFailing, result.stillFailing].filter(Boolean).join('; ')
}
