import postgres from 'postgres'

/**
 * Sets the database at `databaseUrl`'s default for `setting` (`ALTER DATABASE ... SET`), or resets
 * it when `value` is undefined, as an operator does; then ends the sessions open on that database.
 * A database default applies only to sessions started after it: the clients that reconnect get it.
 * `endSessions: false` leaves the open ones be (when nothing that must see the value is connected
 * yet). Test-only.
 *
 * It runs from the same server's `postgres` database: a session of the database itself may be
 * unable to (under default_transaction_read_only), or to connect at all (postgres.js's own catalog
 * query on connecting canceled by a too-low statement_timeout).
 */
export async function setDatabaseDefault(databaseUrl: string, setting: string, value: string | undefined, opts: { endSessions?: boolean } = {}) {
  const url = new URL(databaseUrl)
  const name = decodeURIComponent(url.pathname.slice(1))
  url.pathname = '/postgres'
  const admin = postgres(url.toString(), { max: 1, onnotice: () => {} })
  try {
    await admin.unsafe(value === undefined ? `ALTER DATABASE "${name}" RESET ${setting}` : `ALTER DATABASE "${name}" SET ${setting} = '${value}'`)
    if (opts.endSessions === false) return
    await admin`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = ${name} AND pid <> pg_backend_pid()`
  } finally {
    await admin.end()
  }
}
