import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import postgres from 'postgres'
import { connectPostgres, migrate } from '../../core/db/client'

/**
 * A throwaway Postgres cluster (initdb into a temporary directory) that a test may stop and start
 * on the same port. As root, the server runs as the `postgres` user (Postgres refuses root).
 */
export type PrivatePostgres = {
  /** postgres://postgres@127.0.0.1:<port>/postgres */
  url: string
  start: () => Promise<void>
  /** `pg_ctl stop -m fast`: clients are disconnected, as in a real restart. */
  stop: () => Promise<void>
  /** Stops the server if running and deletes its directory. */
  destroy: () => Promise<void>
}

/** Directory holding initdb and pg_ctl, or undefined when the Postgres server tools are absent. */
export function postgresBinDir(): string | undefined {
  const root = '/usr/lib/postgresql'
  const versions = existsSync(root) ? readdirSync(root).filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a)) : []
  for (const v of versions) if (existsSync(join(root, v, 'bin', 'pg_ctl'))) return join(root, v, 'bin')
  const initdb = Bun.which('initdb')
  const pgCtl = Bun.which('pg_ctl')
  return initdb && pgCtl && join(initdb, '..') === join(pgCtl, '..') ? join(initdb, '..') : undefined
}

/** Why a private cluster cannot be made here, or undefined when it can. */
export function privatePostgresUnavailable(): string | undefined {
  if (!postgresBinDir()) return 'Postgres server tools (initdb, pg_ctl) are not installed'
  if (process.getuid?.() === 0 && !Bun.which('runuser')) return 'running as root without runuser to drop to the postgres user'
  return undefined
}

async function run(cmd: string[]): Promise<void> {
  const asRoot = process.getuid?.() === 0
  const full = asRoot ? ['runuser', '-u', 'postgres', '--', ...cmd] : cmd
  const p = Bun.spawn(full, { stdout: 'pipe', stderr: 'pipe', cwd: tmpdir() })
  const [code, out, err] = await Promise.all([p.exited, new Response(p.stdout).text(), new Response(p.stderr).text()])
  if (code !== 0) throw new Error(`${full.join(' ')} exited ${code}:\n${out}\n${err}`)
}

/**
 * `settings` are more server settings (`-c` options), e.g. `max_connections=8` (they override the
 * defaults here: fsync off, 50 connections).
 */
export async function createPrivatePostgres(port: number, settings: string[] = []): Promise<PrivatePostgres> {
  const bin = postgresBinDir()
  if (!bin) throw new Error('Postgres server tools are not installed')
  const base = mkdtempSync(join(tmpdir(), 'fanfare-pg-'))
  const dataDir = join(base, 'data')
  if (process.getuid?.() === 0) {
    const uid = Number((await new Response(Bun.spawn(['id', '-u', 'postgres']).stdout).text()).trim())
    const gid = Number((await new Response(Bun.spawn(['id', '-g', 'postgres']).stdout).text()).trim())
    chownSync(base, uid, gid)
  }
  await run([join(bin, 'initdb'), '-D', dataDir, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-sync'])
  const options = [`-p ${port} -k ${base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50`, ...settings.map((s) => `-c ${s}`)].join(' ')
  let running = false
  const pg: PrivatePostgres = {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    start: async () => {
      await run([join(bin, 'pg_ctl'), '-D', dataDir, '-o', options, '-l', join(base, 'log'), '-w', '-t', '30', 'start'])
      running = true
    },
    stop: async () => {
      await run([join(bin, 'pg_ctl'), '-D', dataDir, '-m', 'fast', '-w', '-t', '30', 'stop'])
      running = false
    },
    destroy: async () => {
      if (running) await run([join(bin, 'pg_ctl'), '-D', dataDir, '-m', 'immediate', '-w', 'stop']).catch(() => {})
      rmSync(base, { recursive: true, force: true })
    },
  }
  return pg
}

/**
 * Creates the database `fanfare` on a running private cluster and migrates it. Returns its URL and
 * an admin connection to the `postgres` database (for ALTER DATABASE, pg_terminate_backend, ...),
 * which the caller ends.
 */
export async function createFanfareDatabase(pg: PrivatePostgres): Promise<{ admin: postgres.Sql; databaseUrl: string }> {
  const admin = postgres(pg.url, { max: 1, onnotice: () => {} })
  await admin.unsafe('CREATE DATABASE fanfare')
  const databaseUrl = pg.url.replace(/\/postgres$/, '/fanfare')
  const database = await connectPostgres(databaseUrl, { max: 1 })
  await migrate(database)
  await database.close()
  return { admin, databaseUrl }
}
