/**
 * What a Postgres error means to a caller, for either driver (postgres.js: `code` = SQLSTATE or a
 * connection code; Bun's SQL client: `code` = `ERR_POSTGRES_*`, `errno` = SQLSTATE), also when
 * drizzle wraps it in `cause`. Shared by the workers (retry or stop) and the API (503 or 500).
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
 * Single SQLSTATEs worth retrying outside those classes:
 * - 25006 read_only_sql_transaction, a database that takes no writes for a while (DATABASE_URL
 *   reaching a hot standby during a failover, default_transaction_read_only set for maintenance).
 *   Exiting would leave the restart to the container's backoff, which grows to minutes; retrying
 *   resumes as soon as writes are back.
 * - 42P05 duplicate_prepared_statement and 26000 invalid_sql_statement_name. No query here prepares
 *   a statement itself: the drivers do, one per query text per connection. When Postgres cancels or
 *   ends statements while a connection prepares one (statement_timeout, pg_terminate_backend), Bun's
 *   SQL client (1.4.5) can lose track of a statement the server did store and prepare the same name
 *   again: `42P05 prepared statement "P0" already exists`. Nothing is wrong with the query, and the
 *   next one on that connection succeeds (bench/prepared-cancel-probe.ts shows both); a worker
 *   treating it as a bug exited. 26000 is the same loss the other way (a name the server dropped).
 */
const transientSqlStates = new Set(['25006', '42P05', '26000'])

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

/** The SQLSTATE of a Postgres error (postgres.js `code`, Bun's SQL `errno`), also when drizzle wraps it in `cause`. */
export function sqlStateOf(err: unknown): string | undefined {
  type E = { code?: unknown; errno?: unknown; cause?: unknown }
  for (let e = err as E | undefined, depth = 0; e && depth < 5; e = e.cause as E | undefined, depth++) {
    for (const v of [e.errno, e.code]) if (typeof v === 'string' && /^[0-9A-Z]{5}$/.test(v)) return v
  }
  return undefined
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

/**
 * True for an error raised by Postgres or its driver (postgres.js, Bun's SQL client), also when
 * drizzle wraps it (`DrizzleQueryError`, whose message is the whole query and its parameters).
 */
export function isDbError(err: unknown): boolean {
  for (let e = err as { cause?: unknown; name?: unknown } | undefined, d = 0; e && d < 5; e = e.cause as typeof e, d++) {
    if (e.name === 'PostgresError' || e.name === 'DrizzleQueryError' || e.name === 'SQLError') return true
  }
  return false
}

/**
 * A database error as a log line holds it: its type, its code (SQLSTATE, else the driver's) and
 * what Postgres said (dbErrorSummary), never the query, its parameters (event data: player names,
 * chat text) or the error's detail (which quotes row values). Used by the logger for every `err`.
 */
export function loggedDbError(err: unknown): { type: string; code?: string; message: string } {
  type E = { name?: unknown; code?: unknown; cause?: unknown }
  let code: string | undefined
  for (let e = err as E | undefined, d = 0; e && d < 5; e = e.cause as E | undefined, d++) if (typeof e.code === 'string') code ??= e.code
  return { type: String((err as E).name ?? 'Error'), code: sqlStateOf(err) ?? code, message: dbErrorSummary(err) }
}

/**
 * What an error says, for a message that leaves the process (a reply, a span's status, a stored
 * job state): for a database error its summary (dbErrorSummary), never drizzle's query and
 * parameters; for any other its message.
 */
export function errorMessageOf(err: unknown): string {
  if (isDbError(err)) return dbErrorSummary(err)
  return err instanceof Error ? err.message : String(err)
}
