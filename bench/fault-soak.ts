/**
 * `npm run soak:faults -- [--fault=none|nats|nats-workers|workers|postgres|api] [--all] [--repo=<path>]
 * [--seconds=14] [--keep]`: the outside fault check. Fanfare runs from a fresh `git clone` of a
 * repository (default: this one; its checked-out commit, so commit what you want checked) as an
 * operator runs it: `bun core/db/migrate-cli.ts`, then the workers and an API node as separate
 * processes, on a database of their own and a private nats-server (and, for the postgres fault, a
 * private Postgres). The machine's own Postgres and NATS are never stopped.
 *
 * Three raw WebSocket subscribers follow `leaderboard:soak` (reconnecting and resuming with their
 * last version and epoch when cut); four lanes send batches of 100 score events over REST for
 * `--seconds`, each player's scores rising so every event is a change, resending a refused or
 * unanswered batch with the same ids as a client would. At 5 s a fault is injected, at 7 s
 * repaired. After a drain the run compares what was acknowledged with the read model, the REST
 * board and each subscriber, and exits non-zero if a promise is broken: an acknowledged event
 * lost, an event applied twice or out of its key's order, a subscriber with a silent gap or a view
 * unequal to the REST board. `--all` runs every fault in turn; FAULT=<fault> works as --fault.
 * `nats-workers`: NATS killed and started again, the workers killed and started again, then both
 * once more (routine restarts and deploys): every runner opens its consumer anew and reads the
 * event stream's identity, which nats-server 2.9 reports moved after a restart that followed a
 * stream update (the workers of earlier versions applied every event again; `nats` alone never
 * made them read it).
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import postgres from 'postgres'
import { TEST_PG_URL } from '../core/testing/env'
import { freePort, spawnProc, waitReady, type Proc } from '../test/e2e/harness'
import { privateNats, type PrivateNats } from '../test/cluster/private-nats'
import { createPrivatePostgres, type PrivatePostgres } from '../test/cluster/private-postgres'
import { apiAt, configureBoard, type Api } from '../test/cluster/support'
import { BOARD, LANES, Subscriber, cloneCheckout, ingestLane, judge, newLedger, type Checkout, type Ledger, type Verdict } from './lib/soak'

const FAULTS = ['none', 'nats', 'nats-workers', 'workers', 'postgres', 'api'] as const
type Fault = (typeof FAULTS)[number]

const SUBSCRIBERS = 3
const FAULT_AT_MS = 5000
const REPAIR_AT_MS = 7000

type Options = { faults: Fault[]; repo: string; seconds: number; keep: boolean }

function parseOptions(argv: string[]): Options {
  const value = (name: string) => {
    const i = argv.findIndex((a) => a === `--${name}` || a.startsWith(`--${name}=`))
    if (i < 0) return undefined
    return argv[i].includes('=') ? argv[i].slice(name.length + 3) : argv[i + 1]
  }
  const fault = value('fault') ?? process.env.FAULT ?? 'none'
  if (!FAULTS.includes(fault as Fault)) throw new Error(`--fault must be one of ${FAULTS.join(', ')} (got ${fault})`)
  return {
    faults: argv.includes('--all') ? [...FAULTS] : [fault as Fault],
    repo: resolve(value('repo') ?? resolve(import.meta.dir, '..')),
    seconds: Number(value('seconds') ?? 14),
    keep: argv.includes('--keep'),
  }
}

// ---------------------------------------------------------------------------------------------
// The servers Fanfare runs on

type Database = { url: string; pg?: PrivatePostgres; drop: () => Promise<void> }

/**
 * A database of the run's own: on a private Postgres for the postgres fault (it is stopped and
 * started), else a fresh database on the machine's Postgres.
 */
async function createDatabase(fault: Fault, id: string): Promise<Database> {
  const create = async (serverUrl: string, name: string) => {
    const admin = postgres(serverUrl, { max: 1, onnotice: () => {} })
    await admin.unsafe(`CREATE DATABASE ${name}`)
    await admin.end()
    const url = new URL(serverUrl)
    url.pathname = `/${name}`
    return url.toString()
  }
  if (fault === 'postgres') {
    const pg = await createPrivatePostgres(freePort())
    await pg.start()
    return { url: await create(pg.url, 'fanfare'), pg, drop: () => pg.destroy() }
  }
  const name = `fanfare_soak_${id}`
  return {
    url: await create(TEST_PG_URL, name),
    drop: async () => {
      const admin = postgres(TEST_PG_URL, { max: 1, onnotice: () => {} })
      await admin.unsafe(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
      await admin.end()
    },
  }
}

/**
 * Fanfare's processes on one checkout, database and NATS, started (not yet ready); every process
 * ever started is kept, for its log and to be stopped.
 */
type Deployment = {
  api: Api
  nats: PrivateNats
  db: Database
  procs: Proc[]
  apiProc: Proc
  workersProc: Proc
  startApi: () => Proc
  startWorkers: () => Proc
}

async function deploy(checkout: Checkout, db: Database, nats: PrivateNats, id: string): Promise<Deployment> {
  const port = freePort()
  const vars: Record<string, string> = {
    DATABASE_URL: db.url,
    NATS_URL: nats.url,
    PORT: String(port),
    HOST: '127.0.0.1',
    FANFARE_INGEST_TOKEN: `soak-ingest-${id}`,
    FANFARE_ADMIN_TOKEN: `soak-admin-${id}`,
    LOG_LEVEL: process.env.LOG_LEVEL ?? 'warn',
  }
  const migrate = spawnProc('migrate', 'core/db/migrate-cli.ts', vars, checkout.dir)
  if ((await migrate.proc.exited) !== 0) throw new Error(`migrate exited ${migrate.proc.exitCode}:\n${migrate.output()}`)
  const d: Deployment = {
    api: apiAt(port, vars),
    nats,
    db,
    procs: [migrate],
    apiProc: undefined as unknown as Proc,
    workersProc: undefined as unknown as Proc,
    startApi: () => {
      d.apiProc = spawnProc(`api#${d.procs.filter((p) => p.name.startsWith('api')).length + 1}`, 'api/src/main.ts', vars, checkout.dir)
      d.procs.push(d.apiProc)
      return d.apiProc
    },
    startWorkers: () => {
      d.workersProc = spawnProc(`workers#${d.procs.filter((p) => p.name.startsWith('workers')).length + 1}`, 'stream-workers/src/main.ts', vars, checkout.dir)
      d.procs.push(d.workersProc)
      return d.workersProc
    },
  }
  d.startWorkers()
  d.startApi()
  return d
}

/** What each fault breaks at FAULT_AT_MS and repairs at REPAIR_AT_MS. */
const FAULT_ACTIONS: Record<Fault, { inject: (d: Deployment) => Promise<unknown>; repair: (d: Deployment) => Promise<unknown> }> = {
  none: { inject: async () => {}, repair: async () => {} },
  nats: { inject: (d) => d.nats.kill(), repair: (d) => d.nats.start() },
  'nats-workers': {
    inject: (d) => d.nats.kill(),
    repair: async (d) => {
      await d.nats.start()
      // New workers update the streams on the restarted server (every process does at start)...
      await d.workersProc.stop('SIGKILL')
      d.startWorkers()
      await Bun.sleep(3000)
      // ...so after the next restart nats-server 2.9 reports another `created`, which the workers
      // started after it read as the stream's identity.
      await d.nats.kill()
      await d.nats.start()
      await d.workersProc.stop('SIGKILL')
      d.startWorkers()
    },
  },
  workers: { inject: (d) => d.workersProc.stop('SIGKILL'), repair: async (d) => d.startWorkers() },
  postgres: { inject: (d) => d.db.pg!.stop(), repair: (d) => d.db.pg!.start() },
  api: { inject: (d) => d.apiProc.stop('SIGKILL'), repair: async (d) => d.startApi() },
}


// ---------------------------------------------------------------------------------------------
// The run and its verdict

type FaultTimes = { injectedAt?: number; injectTookMs?: number; repairedAt?: number; repairTookMs?: number }

/** Injects the fault at FAULT_AT_MS and repairs it at REPAIR_AT_MS (or once injected, if later). */
async function runFault(fault: Fault, d: Deployment, startedAt: number): Promise<FaultTimes> {
  const t: FaultTimes = {}
  if (fault === 'none') return t
  await Bun.sleep(Math.max(0, startedAt + FAULT_AT_MS - Date.now()))
  t.injectedAt = Date.now() - startedAt
  await FAULT_ACTIONS[fault].inject(d)
  t.injectTookMs = Date.now() - startedAt - t.injectedAt
  await Bun.sleep(Math.max(0, startedAt + REPAIR_AT_MS - Date.now()))
  t.repairedAt = Date.now() - startedAt
  await FAULT_ACTIONS[fault].repair(d)
  t.repairTookMs = Date.now() - startedAt - t.repairedAt
  return t
}

type Outcome = Verdict & { fault: Fault }

async function checkOutcome(fault: Fault, d: Deployment, ledger: Ledger, subs: Subscriber[], times: FaultTimes, ingestMs: number): Promise<Outcome> {
  const verdict = await judge(d.api, d.db.url, ledger, subs, ingestMs)
  verdict.summary.unshift(
    `fault ${fault}${times.injectedAt !== undefined ? `: injected at ${(times.injectedAt / 1000).toFixed(1)} s (took ${times.injectTookMs} ms), repaired at ${(times.repairedAt! / 1000).toFixed(1)} s (took ${times.repairTookMs} ms)` : ''}`,
  )
  return { fault, ...verdict }
}

const loadAverage = () => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')

/** What to undo when the soak is interrupted (Ctrl-C): its processes and servers must not outlive it. */
const teardowns = new Set<() => Promise<void>>()
/** The soak's scratch directory (clone, stores, logs), removed on an interrupt unless --keep. */
let scratch: string | undefined
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, async () => {
    await Promise.all([...teardowns].map((t) => t().catch(() => {})))
    if (scratch) rmSync(scratch, { recursive: true, force: true })
    process.exit(130)
  })
}

async function soak(fault: Fault, checkout: Checkout, base: string, seconds: number): Promise<Outcome> {
  const id = `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`
  const nats = privateNats({ port: freePort(), storeDir: join(base, `nats-${fault}`) })
  let db: Database | undefined
  let d: Deployment | undefined
  const subs: Subscriber[] = []
  const teardown = async () => {
    teardowns.delete(teardown)
    for (const s of subs) s.stop()
    if (d) {
      await Promise.all(d.procs.map((p) => p.stop('SIGKILL')))
      const logs = join(base, `logs-${fault}`)
      mkdirSync(logs, { recursive: true })
      for (const p of d.procs) writeFileSync(join(logs, `${p.name}.log`), p.output())
    }
    await nats.stop()
    await db?.drop()
  }
  teardowns.add(teardown)
  try {
    await nats.start()
    db = await createDatabase(fault, id)
    d = await deploy(checkout, db, nats, id)
    const dep = d
    await waitReady(dep.api.baseUrl, [dep.apiProc, dep.workersProc], 60_000)
    await configureBoard(dep.api, BOARD, 'latest')
    for (let i = 1; i <= SUBSCRIBERS; i++) subs.push(new Subscriber(`subscriber ${i}`, () => `${dep.api.baseUrl.replace('http', 'ws')}/v1/ws`))
    await Promise.all(subs.map((s) => s.start()))

    const loadBefore = loadAverage()
    const ledger = newLedger()
    const startedAt = Date.now()
    const endAt = startedAt + seconds * 1000
    const [times] = await Promise.all([
      runFault(fault, dep, startedAt),
      ...Array.from({ length: LANES }, (_, lane) => ingestLane(dep.api, id, lane, startedAt, endAt, ledger)),
    ])
    const ingestMs = Date.now() - startedAt
    const outcome = await checkOutcome(fault, dep, ledger, subs, times, ingestMs)
    outcome.summary.unshift(`load average ${loadBefore} before, ${loadAverage()} after`)
    return outcome
  } finally {
    await teardown()
  }
}

async function main() {
  const opts = parseOptions(process.argv.slice(2))
  const base = mkdtempSync(join(tmpdir(), 'fanfare-soak-'))
  if (!opts.keep) scratch = base
  const checkout = await cloneCheckout(opts.repo, join(base, 'repo'))
  console.log(`fault soak of ${opts.repo} at ${checkout.commit} (clone in ${checkout.dir})`)
  // Fanfare's variables in this environment reach its processes (say, a key's rate limit lifted).
  const passed = Object.keys(process.env).filter((k) => (k.startsWith('FANFARE_') || k === 'LOG_LEVEL') && !/TOKEN|SECRET/.test(k))
  if (passed.length > 0) console.log(`from the environment: ${passed.map((k) => `${k}=${process.env[k]}`).join(' ')}`)
  const outcomes: Outcome[] = []
  for (const fault of opts.faults) {
    const o = await soak(fault, checkout, base, opts.seconds).catch((err): Outcome => ({ fault, ok: false, broken: [`the run failed: ${(err as Error).stack ?? err}`], notes: [], summary: [] }))
    outcomes.push(o)
    console.log(`\n=== ${fault}: ${o.ok ? 'OK' : 'BROKEN'}`)
    for (const line of [...o.summary, ...o.notes.map((n) => `note: ${n}`), ...o.broken.map((b) => `BROKEN: ${b}`)]) console.log(`  ${line}`)
  }
  const failed = outcomes.filter((o) => !o.ok)
  if (failed.length > 0 || opts.keep) console.log(`\nprocess logs kept in ${base}/logs-<fault>/`)
  else rmSync(base, { recursive: true, force: true })
  console.log(`\n${outcomes.map((o) => `${o.fault} ${o.ok ? 'OK' : 'BROKEN'}`).join(', ')}`)
  process.exit(failed.length > 0 ? 1 : 0)
}

await main()
