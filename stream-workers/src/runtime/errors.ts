/**
 * Error classification for the consume loop. In a worker every failure is one of three: a bad
 * message (dead-lettered inside the batch, never reaches here), a transient fault (retried in
 * place), or a fatal one (a bug: the process exits and is restarted).
 */

/** Node/postgres.js error codes of a broken or unreachable connection. */
const transientCodes = new Set([
  'CONNECTION_CLOSED',
  'CONNECTION_ENDED',
  'CONNECTION_DESTROYED',
  'CONNECT_TIMEOUT',
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EAI_AGAIN',
])

/**
 * SQLSTATE classes worth retrying: 08 connection exception, 40 transaction rollback
 * (serialization failure, deadlock), 53 insufficient resources, 57 operator intervention
 * (admin_shutdown from pg_terminate_backend, cannot_connect_now during restart), 58 system error.
 */
const transientSqlStateClasses = new Set(['08', '40', '53', '57', '58'])

/**
 * Single SQLSTATEs worth retrying outside those classes: 25006 read_only_sql_transaction, a
 * database that takes no writes for a while (DATABASE_URL reaching a hot standby during a
 * failover, default_transaction_read_only set for maintenance). Exiting would leave the restart to
 * the container's backoff, which grows to minutes; retrying resumes as soon as writes are back.
 */
const transientSqlStates = new Set(['25006'])

const isTransientSqlState = (code: string) => /^[0-9A-Z]{5}$/.test(code) && (transientSqlStateClasses.has(code.slice(0, 2)) || transientSqlStates.has(code))

/**
 * True when retrying the same work later may succeed (Postgres down, connection cut, deadlock).
 * Understands postgres.js (`code` = SQLSTATE or a connection code) and Bun's SQL client (`code` =
 * `ERR_POSTGRES_*`, `errno` = SQLSTATE), also when wrapped by drizzle in `cause`.
 */
export function isTransientDbError(err: unknown): boolean {
  type E = { code?: unknown; errno?: unknown; cause?: unknown }
  for (let e = err as E | undefined, depth = 0; e && depth < 5; e = e.cause as E | undefined, depth++) {
    const code = typeof e.code === 'string' ? e.code : undefined
    const errno = typeof e.errno === 'string' ? e.errno : undefined
    if (code && (transientCodes.has(code) || isTransientSqlState(code))) return true
    if (errno && isTransientSqlState(errno)) return true
    // Raised by Bun's client itself: connection closed or refused, timeouts.
    if (code && /^ERR_POSTGRES_(CONNECTION_|.*TIMEOUT|.*CLOSED|.*REFUSED)/.test(code)) return true
  }
  return false
}

/**
 * SQLSTATE classes that say Postgres refused the data itself: 22 data exception (a NUL or lone
 * surrogate in text, a date out of range, a number out of range, a bad cast) and 54 program limit
 * exceeded (a row too big for an index). The same statement fails alike however often it is
 * retried: the event that carries such data is a bad message (a dead letter), not a reason to stop.
 */
const dataSqlStateClasses = new Set(['22', '54'])

/** The SQLSTATE of a Postgres error (postgres.js `code`, Bun's SQL `errno`), also when drizzle wraps it in `cause`. */
export function sqlStateOf(err: unknown): string | undefined {
  type E = { code?: unknown; errno?: unknown; cause?: unknown }
  for (let e = err as E | undefined, depth = 0; e && depth < 5; e = e.cause as E | undefined, depth++) {
    for (const v of [e.errno, e.code]) if (typeof v === 'string' && /^[0-9A-Z]{5}$/.test(v)) return v
  }
  return undefined
}

/** True when Postgres refused a statement for the data it carries (see dataSqlStateClasses). */
export function isDataDbError(err: unknown): boolean {
  const state = sqlStateOf(err)
  return state !== undefined && dataSqlStateClasses.has(state.slice(0, 2))
}

/** What Postgres said, for a dead letter's reason: `22P05 unsupported Unicode escape sequence`. */
export function dbErrorSummary(err: unknown): string {
  type E = { message?: unknown; cause?: unknown }
  let message = ''
  // The innermost message is the server's own; drizzle's wrapper repeats the whole query.
  for (let e = err as E | undefined, depth = 0; e && depth < 5; e = e.cause as E | undefined, depth++) {
    if (typeof e.message === 'string') message = e.message
  }
  return `${sqlStateOf(err) ?? ''} ${message.slice(0, 300)}`.trim()
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
