import { mkdirSync } from 'node:fs'
import { join, resolve } from 'node:path'
import type { SQL } from 'drizzle-orm'
import type { PgDatabase, PgQueryResultHKT } from 'drizzle-orm/pg-core'
import { acquireDirLock } from './dir-lock'
import { dbErrorSummary } from './errors'
import * as schema from './schema'
import { StartFailure } from '../start-failure'
import { statementSpan } from '../tracing'

/** The drizzle database, whichever driver is behind it (postgres.js or embedded PGlite). */
export type Db = PgDatabase<PgQueryResultHKT, typeof schema>
/** A transaction handle: the same query API as Db. */
export type Tx = Parameters<Parameters<Db['transaction']>[0]>[0]

export type Database = {
  db: Db
  /** 'postgres' for a server, 'pglite' for the embedded engine (one connection, one process). */
  kind: 'postgres' | 'pglite'
  close: () => Promise<void>
}

/** Rows of a raw query, whichever driver (postgres.js and Bun return arrays, PGlite `{ rows }`). */
export async function rowsOf<T>(q: Db | Tx, query: SQL): Promise<T[]> {
  const r = (await q.execute(query)) as unknown
  return (Array.isArray(r) ? r : ((r as { rows?: T[] }).rows ?? [])) as T[]
}

export const migrationsFolder = resolve(import.meta.dir, '../../migrations')

/**
 * A Database on a Postgres server whose connections a watch can drop at once (see watchDatabase).
 * Neither driver bounds a query sent on an open connection (no query timeout; a cancel waits for
 * the server's answer; TCP keepalive only probes idle connections): on a path that stops carrying
 * packets without a reset, the query waits until the path comes back or TCP gives up (many
 * minutes). `dropConnections` is the way out.
 */
export type DroppableDatabase = Database & {
  /**
   * Closes every connection of the pool at once: each query in flight on one, or waiting for one,
   * fails with the driver's connection-closed error (transient: its caller retries), and later
   * queries open new connections.
   */
  dropConnections: () => void
  /**
   * `select 1` on a connection of its own, never queued behind the pool's queries. Rejects with
   * NotAnswering when no answer came within `timeoutMs` (that connection is then dropped too), or
   * with the driver's error (refused, connect timeout, ...).
   */
  ping: (timeoutMs: number) => Promise<void>
}

/** A query Postgres left unanswered for longer than the caller would wait. */
export class NotAnswering extends Error {
  constructor(readonly timeoutMs: number) {
    super(`Postgres did not answer within ${timeoutMs} ms`)
    this.name = 'NotAnswering'
  }
}

/** Milliseconds as the drivers' whole seconds (at least one); undefined stays so (their default). */
const seconds = (ms: number | undefined) => (ms === undefined ? undefined : Math.max(1, Math.ceil(ms / 1000)))

type Pool = { unsafe: (...args: never[]) => PromiseLike<unknown>; begin: (...args: never[]) => unknown }

/**
 * `begin`'s arguments (`(fn)` or `(options, fn)`) with `fn` given a transaction whose statements
 * are spanned as the pool's are: drizzle's sessions call `unsafe` (and `savepoint`, for a nested
 * transaction) on the transaction the driver hands them. A savepoint's `(fn)` or `(name, fn)` is
 * wrapped the same way, so its statements (a batch's one-by-one fallback) are spanned too.
 */
function spannedTransaction(args: unknown[]): unknown[] {
  const at = args.findIndex((a) => typeof a === 'function')
  if (at < 0) return args
  const fn = args[at] as (tx: unknown) => unknown
  const wrapped = (tx: { unsafe: (...a: never[]) => PromiseLike<unknown>; savepoint: (...a: never[]) => unknown; options?: unknown }) =>
    fn({ unsafe: (...a: never[]) => statementSpan(tx.unsafe(...a), a[0]), savepoint: (...a: never[]) => tx.savepoint(...(spannedTransaction(a) as never[])), options: tx.options })
  return args.map((a, i) => (i === at ? wrapped : a))
}

/**
 * The pool behind a DroppableDatabase. `current` is what drizzle is given: its sessions call only
 * `unsafe` and `begin` on it (and postgres.js' reads `options`), forwarded to the pool `open` made
 * last, which `dropConnections` replaces.
 */
function droppable<C extends Pool>(deps: {
  open: (max: number) => C
  max: number
  close: (client: C, timeoutSeconds: number) => Promise<void>
  /** Told of each pool opened after the first. */
  opened?: (client: C, first: C) => void
}): Omit<DroppableDatabase, 'db' | 'kind'> & { current: C } {
  const first = deps.open(deps.max)
  let client = first
  let probe: C | undefined
  const current = {
    // Statements run in a sampled trace (a REST request's) get a span each (see statementSpan),
    // those of a transaction too (a channel's snapshot: its version and data in one).
    unsafe: (...args: never[]) => statementSpan(client.unsafe(...args), args[0]),
    begin: (...args: never[]) => client.begin(...(spannedTransaction(args) as never[])),
    options: (first as { options?: unknown }).options,
  } as unknown as C
  return {
    current,
    close: async () => {
      if (probe) await deps.close(probe, 0)
      await deps.close(client, 5)
    },
    dropConnections: () => {
      const old = client
      client = deps.open(deps.max)
      deps.opened?.(client, first)
      void deps.close(old, 0).catch(() => {})
    },
    ping: async (timeoutMs) => {
      const p = (probe ??= deps.open(1))
      let timer: ReturnType<typeof setTimeout> | undefined
      const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new NotAnswering(timeoutMs)), timeoutMs)))
      try {
        await Promise.race([(p.unsafe as (q: string) => PromiseLike<unknown>)('select 1'), late])
      } catch (err) {
        // Its connection may be stuck with the unanswered query: the next ping opens a new one.
        if (probe === p) probe = undefined
        void deps.close(p, 0).catch(() => {})
        throw err
      } finally {
        clearTimeout(timer)
      }
    },
  }
}

/**
 * Connects to a Postgres server through postgres.js. No connection is made until first query.
 * `connectTimeoutMs` (whole seconds, at least one; default the driver's 30 s) bounds opening a
 * connection, login included.
 */
export async function connectPostgres(url: string, options: { max?: number; connectTimeoutMs?: number } = {}): Promise<DroppableDatabase> {
  const { default: postgres } = await import('postgres')
  const { drizzle } = await import('drizzle-orm/postgres-js')
  const connect_timeout = seconds(options.connectTimeoutMs)
  const pool = droppable({
    // fetch_types off: postgres.js otherwise runs a catalog query of its own on each new connection
    // and, when it fails (canceled by statement_timeout, by an operator, ...), rejects a promise
    // nobody awaits, which ends the process (porsager/postgres#1192). It only learns array types,
    // which no query here sends or reads (JSON goes as jsonb).
    open: (max) => postgres(url, { max, onnotice: () => {}, fetch_types: false, ...(connect_timeout === undefined ? {} : { connect_timeout }) }),
    max: options.max ?? 10,
    close: (client, timeout) => client.end({ timeout }),
    // drizzle set its parsers and serializers (dates as strings) on the first pool's options only.
    opened: (client, first) => {
      Object.assign(client.options.parsers, first.options.parsers)
      Object.assign(client.options.serializers, first.options.serializers)
    },
  })
  const { current, ...rest } = pool
  return { db: drizzle({ client: current, schema }) as unknown as Db, kind: 'postgres', ...rest }
}

/**
 * Connects to a Postgres server through Bun's built-in SQL client. Use it in processes that must
 * survive killed backends: postgres.js 3.4.9 throws an uncatchable TypeError (`socket.write` on
 * null, porsager/postgres#1208) and leaves the open transaction's promise pending forever when the
 * backend of a reserved connection dies; Bun's client rejects the query instead.
 * `connectTimeoutMs` (whole seconds, at least one; default Bun's 30 s) bounds opening a
 * connection, login included.
 */
export async function connectBunSql(url: string, options: { max?: number; connectTimeoutMs?: number } = {}): Promise<DroppableDatabase> {
  const { SQL } = await import('bun')
  const { drizzle } = await import('drizzle-orm/bun-sql')
  const connectionTimeout = seconds(options.connectTimeoutMs)
  const pool = droppable({
    open: (max) => new SQL({ url, max, ...(connectionTimeout === undefined ? {} : { connectionTimeout }) }),
    max: options.max ?? 10,
    close: (client, timeout) => client.close({ timeout }),
  })
  const { current, ...rest } = pool
  return { db: drizzle({ client: current, schema }) as unknown as Db, kind: 'postgres', ...rest }
}

/**
 * Opens the embedded PGlite database under `dataDir`. PGlite has no lock against a second
 * process opening the same directory, so an OS lock on `pglite.lock` guards it (see dir-lock.ts).
 */
export async function openEmbedded(dataDir: string): Promise<Database> {
  const { PGlite } = await import('@electric-sql/pglite')
  const { drizzle } = await import('drizzle-orm/pglite')
  const dir = resolve(dataDir, 'pglite')
  mkdirSync(dir, { recursive: true })
  const releaseLock = acquireDirLock(join(resolve(dataDir), 'pglite.lock'))
  let client: InstanceType<typeof PGlite>
  try {
    client = await PGlite.create(dir)
  } catch (err) {
    releaseLock()
    throw err
  }
  return {
    db: drizzle(client, { schema }) as unknown as Db,
    kind: 'pglite',
    close: async () => {
      await client.close()
      releaseLock()
    },
  }
}

/**
 * Applies the committed drizzle-kit migrations. Idempotent, and safe to run from several processes
 * at once: on a Postgres server they take turns under an advisory lock (drizzle's migrator takes
 * none, so two at once both created the first table and one failed), and the later one finds
 * nothing left to apply. The lock is a session's: pass a one-connection Database
 * (`connectPostgres(url, { max: 1 })`), so the lock, the migrations and the unlock share it.
 */
export async function migrate(database: Database): Promise<void> {
  if (database.kind === 'pglite') {
    const { migrate } = await import('drizzle-orm/pglite/migrator')
    await migrate(database.db as never, { migrationsFolder })
    return
  }
  const { sql } = await import('drizzle-orm')
  const { migrate } = await import('drizzle-orm/postgres-js/migrator')
  await database.db.execute(sql`select pg_advisory_lock(hashtext('fanfare migrate'))`)
  try {
    await migrate(database.db as never, { migrationsFolder })
  } finally {
    await database.db.execute(sql`select pg_advisory_unlock(hashtext('fanfare migrate'))`).catch(() => {})
  }
}

/**
 * Thrown at start by a node whose database lacks migrations of its version: `npm run migrate` has
 * not run on it yet (a new deployment, or an upgrade whose migrate step was skipped). Without this
 * check the node crashed on its first query of a missing table, with a raw SQL error.
 */
export class NotMigrated extends StartFailure {
  constructor(missing: string) {
    super(`the database is not migrated for this version (migration ${missing} not applied): run \`npm run migrate\` of this version, then start this node again`)
    this.name = 'NotMigrated'
  }
}

/**
 * Thrown at start by a node that cannot use the database of a setting (DATABASE_URL,
 * DATABASE_READ_URL): nothing answers there, the login is refused, the database does not exist, no
 * connection is free. The message names the setting, the server (never the login) and the cause:
 * the node prints it alone, not a stack trace. Once started, a node rides out a database outage.
 */
export class DatabaseUnreachable extends StartFailure {
  constructor(setting: string, url: string, cause: unknown) {
    super(`cannot use the database at ${setting} (${withoutLogin(url)}): ${connectionFailure(cause)}`, { cause })
    this.name = 'DatabaseUnreachable'
  }
}

/** A Postgres URL as it may be printed: no login (`***@` in its place), no query (it may hold a password). */
function withoutLogin(url: string): string {
  try {
    const u = new URL(url)
    return `${u.protocol}//${u.username || u.password ? '***@' : ''}${u.host}${u.pathname}`
  } catch {
    return 'not a URL'
  }
}

/**
 * Why a first query failed: what Postgres said (dbErrorSummary), with the driver's code when its
 * message lacks it (Bun's SQL client says only "Failed to connect").
 */
function connectionFailure(err: unknown): string {
  const summary = dbErrorSummary(err)
  let code: string | undefined
  for (let e = err as { code?: unknown; cause?: unknown } | undefined, d = 0; e && d < 5; e = e.cause as typeof e, d++) if (typeof e.code === 'string') code = e.code
  return code && !summary.includes(code) && !/^[0-9A-Z]{5} /.test(summary) ? `${summary} (${code})` : summary
}

/**
 * Throws DatabaseUnreachable when the database of `setting` does not answer a query now: what a
 * node checks at start of each database it is given, so that a wrong URL stops it at once.
 */
export async function checkReachable(db: Db, setting: string, url: string): Promise<void> {
  const { sql } = await import('drizzle-orm')
  await db.execute(sql`select 1`).catch((err) => {
    throw new DatabaseUnreachable(setting, url, err)
  })
}

/**
 * Refuses a database that lacks a migration of this version: the newest applied migration (drizzle
 * records each one's journal time) must be at least this version's last. A database ahead of this
 * version (a rolling upgrade migrated it for newer nodes) passes. A database that does not answer
 * throws DatabaseUnreachable naming DATABASE_URL (`url`).
 */
export async function checkMigrated(db: Db, url: string): Promise<void> {
  const { sql } = await import('drizzle-orm')
  const journal = (await Bun.file(join(migrationsFolder, 'meta/_journal.json')).json()) as { entries: { when: number; tag: string }[] }
  const last = journal.entries[journal.entries.length - 1]
  // The process's first query: a database it cannot use (no connection free, refused login) is
  // said plainly here; drizzle's error names only the query and hides the server's reason.
  await checkReachable(db, 'DATABASE_URL', url)
  const [table] = await rowsOf<{ name: string | null }>(db, sql`select to_regclass('drizzle.__drizzle_migrations')::text as name`)
  if (!table?.name) throw new NotMigrated(last.tag)
  const [row] = await rowsOf<{ applied: string | number | null }>(db, sql`select max(created_at) as applied from drizzle.__drizzle_migrations`)
  if (row?.applied == null || Number(row.applied) < last.when) throw new NotMigrated(last.tag)
}
