/**
 * Error classification for the consume loop. In a worker every failure is one of three: a bad
 * message (dead-lettered inside the batch, never reaches here), a transient fault (retried in
 * place), or a fatal one (a bug: the process exits and is restarted).
 */

import { sqlStateOf } from '../../../core/db/errors'

export { dbErrorSummary, errorMessageOf, isDbError, isTransientDbError, sqlStateOf } from '../../../core/db/errors'

/**
 * SQLSTATE classes that say Postgres refused the data itself: 22 data exception (a NUL or lone
 * surrogate in text, a date out of range, a number out of range, a bad cast) and 54 program limit
 * exceeded (a row too big for an index). The same statement fails alike however often it is
 * retried: the event that carries such data is a bad message (a dead letter), not a reason to stop.
 */
const dataSqlStateClasses = new Set(['22', '54'])

/** True when Postgres refused a statement for the data it carries (see dataSqlStateClasses). */
export function isDataDbError(err: unknown): boolean {
  const state = sqlStateOf(err)
  return state !== undefined && dataSqlStateClasses.has(state.slice(0, 2))
}


/** True for errors that only a code change fixes (TypeError and friends): never retried. */
export function isProgrammingError(err: unknown): boolean {
  return err instanceof TypeError || err instanceof ReferenceError || err instanceof SyntaxError || err instanceof RangeError
}

/** Thrown inside a batch transaction when a newer lease owner has written the checkpoint. */
export class FencedError extends Error {
  constructor(
    readonly fence: number,
    readonly token: number,
  ) {
    super(`checkpoint fence ${fence} is newer than this runner's lease token ${token}`)
    this.name = 'FencedError'
  }
}

/**
 * The checkpoint refers to another event stream than the batch came from: the stream was
 * recreated (NATS lost its data) while this runner held messages of the old one. Nothing was
 * written; the runner starts over from the checkpoint with a new consumer.
 */
export class StreamChangedError extends Error {
  constructor(
    readonly checkpointStream: string,
    readonly batchStream: string,
  ) {
    super(`checkpoint is for event stream ${checkpointStream || '(not recorded)'}, the batch came from ${batchStream}`)
    this.name = 'StreamChangedError'
  }
}

/**
 * The checkpoint is not where the runner last saw it (a rebuild moved it, or a write whose answer
 * was lost did commit). Nothing was written; the runner re-reads the checkpoint and goes on from
 * there with a new consumer.
 */
export class CheckpointMovedError extends Error {
  constructor(
    readonly expected: number,
    readonly actual: number | undefined,
  ) {
    super(`checkpoint is at ${actual ?? '(none)'}, not at ${expected} as this runner last saw it`)
    this.name = 'CheckpointMovedError'
  }
}

/**
 * Rows the projection read and others may write (a board's rules) changed before the batch's
 * statement: nothing was written; the runner applies the same batch again from fresh reads.
 */
export class StaleReadError extends Error {
  constructor(readonly projection: string) {
    super(`rows the ${projection} batch read changed before it was written`)
    this.name = 'StaleReadError'
  }
}

/**
 * The batch statement's guard refused the batch because of the checkpoint: nothing was written,
 * and retrying the same batch cannot help.
 */
export function isRefusedBatch(err: unknown): err is FencedError | StreamChangedError | CheckpointMovedError {
  return err instanceof FencedError || err instanceof StreamChangedError || err instanceof CheckpointMovedError
}
