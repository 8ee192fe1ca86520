/**
 * `npm run soak:faults -- [--fault=none|nats|nats-workers|workers|postgres|api] [--all] [--repo=<path>]
 * [--areas=leaderboard,chat,polls,reactions,matches,streams] [--seconds=14] [--keep]`: the outside
 * fault check. Fanfare runs from a fresh `git clone` of a repository (default: this one; its checked-out commit, so commit what you want checked) as an
 * operator runs it: `bun core/db/migrate-cli.ts`, then the workers and an API node as separate
 * processes, on a database of their own and a private nats-server (and, for the postgres fault, a
 * private Postgres). The machine's own Postgres and NATS are never stopped.
 *
 * Every read model is driven at once, each by one module of the same shape under bench/soak/
 * (leaderboard, chat, polls, reactions, matches, streams; see bench/soak/area.ts): its clients send
 * their events over REST for `--seconds`, resending a refused or unanswered batch with the same ids
 * as a client would, and keep what was acknowledged as the area's oracle; raw WebSocket subscribers
 * follow its channels (reconnecting and resuming with their last version and epoch when cut). At
 * 5 s a fault is injected, at 7 s repaired. After a drain each area compares what was acknowledged
 * with its read model, its REST read and each subscriber, and the run exits non-zero if a promise
 * is broken: an acknowledged event lost, an event applied twice or out of its key's order, a
 * subscriber with a silent gap or a view unequal to the REST read, a dead letter. `--all` runs
 * every fault in turn; FAULT=<fault> works as --fault; `--areas=chat,polls` runs only those areas.
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
import { freePort, spawnProc, waitReady, type Proc } from '../test/e2e/harness'
import { privateNats, type PrivateNats } from '../test/cluster/private-nats'
import { createPrivatePostgres, type PrivatePostgres } from '../test/cluster/private-postgres'
import { apiAt, type Api } from '../test/cluster/support'
import { mintUserToken } from '../api/src/auth/mint'
import type { SoakArea, SoakContext } from './soak/area'
import { ChatArea } from './soak/chat'
import { LeaderboardArea } from './soak/leaderboard'
import { MatchesArea } from './soak/matches'
import { PollsArea } from './soak/polls'
import { ReactionsArea } from './soak/reactions'
import { StreamsArea } from './soak/streams'
import { Subscriber } from './soak/subscriber'
import { cloneCheckout, interruptTeardowns, passedEnvironmentLine, scratchDatabase, type Checkout } from './lib/soak'

const FAULTS = ['none', 'nats', 'nats-workers', 'workers', 'postgres', 'api'] as const
type Fault = (typeof FAULTS)[number]

const FAULT_AT_MS = 5000
const REPAIR_AT_MS = 7000

/** The read models a run drives, in the order they are checked (see bench/soak/area.ts). */
const AREAS: Record<string, () => SoakArea> = {
  leaderboard: () => new LeaderboardArea(),
  chat: () => new ChatArea(),
  polls: () => new PollsArea(),
  reactions: () => new ReactionsArea(),
  matches: () => new MatchesArea(),
  streams: () => new StreamsArea(),
}

type Options = { faults: Fault[]; areas: string[]; repo: string; seconds: number; keep: boolean }

function parseOptions(argv: string[]): Options {
  const value = (name: string) => {
    const i = argv.findIndex((a) => a === `--${name}` || a.startsWith(`--${name}=`))
    if (i < 0) return undefined
    return argv[i].includes('=') ? argv[i].slice(name.length + 3) : argv[i + 1]
  }
  const fault = value('fault') ?? process.env.FAULT ?? 'none'
  if (!FAULTS.includes(fault as Fault)) throw new Error(`--fault must be one of ${FAULTS.join(', ')} (got ${fault})`)
  const areas = (value('areas') ?? Object.keys(AREAS).join(',')).split(',')
  const unknown = areas.filter((a) => !(a in AREAS))
  if (unknown.length > 0) throw new Error(`--areas takes a comma-separated list of ${Object.keys(AREAS).join(', ')} (got ${unknown.join(', ')})`)
  return {
    faults: argv.includes('--all') ? [...FAULTS] : [fault as Fault],
    areas,
    repo: resolve(value('repo') ?? resolve(import.meta.dir, '..')),
    seconds: Number(value('seconds') ?? 14),
    keep: argv.includes('--keep'),
  }
}

// ---------------------------------------------------------------------------------------------
// The checkout and the servers Fanfare runs on

type Database = { url: string; pg?: PrivatePostgres; drop: () => Promise<void> }

/**
 * A database of the run's own: on a private Postgres for the postgres fault (it is stopped and
 * started), else a fresh database on the machine's Postgres.
 */
async function createDatabase(fault: Fault, id: string): Promise<Database> {
  if (fault === 'postgres') {
    const pg = await createPrivatePostgres(freePort())
    await pg.start()
    return { url: (await scratchDatabase('fanfare', pg.url)).url, pg, drop: () => pg.destroy() }
  }
  return scratchDatabase(`fanfare_soak_${id}`)
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
    FANFARE_JWT_SECRET: jwtSecret(id),
    // The soak's players never connect to their matches: a join grace past the run keeps their seats.
    FANFARE_MATCH_JOIN_GRACE_MS: String(3_600_000),
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

type Outcome = { fault: Fault; ok: boolean; broken: string[]; notes: string[]; summary: string[] }

/** After the ingest: each area drains and checks what was acknowledged against its read model, REST read and subscribers. */
async function checkOutcome(fault: Fault, ctx: SoakContext, areas: SoakArea[], subs: Map<SoakArea, Subscriber[]>, times: FaultTimes, ingestMs: number): Promise<Outcome> {
  const broken: string[] = []
  const notes: string[] = []
  const summary = [
    `fault ${fault}${times.injectedAt !== undefined ? `: injected at ${(times.injectedAt / 1000).toFixed(1)} s (took ${times.injectTookMs} ms), repaired at ${(times.repairedAt! / 1000).toFixed(1)} s (took ${times.repairTookMs} ms)` : ''}`,
    `ingest ${(ingestMs / 1000).toFixed(1)} s`,
  ]
  // One after another: the first (the leaderboard, the busiest) drains the stream for the others.
  for (const area of areas) {
    const v = await area.check(ctx, subs.get(area)!)
    broken.push(...v.broken)
    notes.push(...v.notes)
    summary.push(...v.summary)
  }
  const dead = Number((await ctx.sql`SELECT count(*)::int AS n FROM dead_letters`)[0].n)
  if (dead > 0) broken.push(`${dead} dead letters`)
  return { fault, ok: broken.length === 0, broken, notes, summary }
}

const loadAverage = () => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')

/** What to undo when the soak is interrupted (Ctrl-C): its processes and servers must not outlive it. */
/** The soak's scratch directory (clone, stores, logs), removed on an interrupt unless --keep. */
let scratch: string | undefined
const teardowns = interruptTeardowns(() => {
  if (scratch) rmSync(scratch, { recursive: true, force: true })
})

/** The deployment's JWT secret: the soak mints its users' tokens with it. */
const jwtSecret = (id: string) => `soak-jwt-secret-${id}-0123456789abcdef`

async function soak(fault: Fault, areaNames: string[], checkout: Checkout, base: string, seconds: number): Promise<Outcome> {
  const id = `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`
  const nats = privateNats({ port: freePort(), storeDir: join(base, `nats-${fault}`) })
  const areas = areaNames.map((name) => AREAS[name]())
  let db: Database | undefined
  let d: Deployment | undefined
  let sql: postgres.Sql | undefined
  const subs = new Map<SoakArea, Subscriber[]>()
  const teardown = async () => {
    teardowns.delete(teardown)
    for (const s of [...subs.values()].flat()) s.stop()
    await sql?.end({ timeout: 5 })
    if (d) {
      await Promise.all(d.procs.map((p) => p.stop('SIGKILL')))
      const logs = join(base, `logs-${fault}`)
      mkdirSync(logs, { recursive: true })
      for (const p of d.procs) writeFileSync(join(logs, `${p.name}.log`), p.output())
      // Its last 20 kB: a slow consumer it cut, a JetStream API that stopped answering.
      writeFileSync(join(logs, 'nats-server.log'), nats.log())
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
    sql = postgres(db.url, { max: 2, onnotice: () => {} })
    const ctx: SoakContext = {
      api: dep.api,
      run: id,
      userToken: (sub, roles) => mintUserToken(jwtSecret(id), { sub, roles, ttlSeconds: 3600 }),
      sql,
      startedAt: 0,
    }
    const wsUrl = () => `${dep.api.baseUrl.replace('http', 'ws')}/v1/ws`
    for (const area of areas) {
      await area.prepare(ctx)
      const followers: Subscriber[] = []
      for (const c of area.channels) {
        const url = c.as ? `${wsUrl()}?token=${await ctx.userToken(c.as)}` : wsUrl()
        for (let i = 1; i <= c.subscribers; i++) followers.push(new Subscriber(`${c.channel} subscriber ${i}`, c.channel, c.view(), () => url))
      }
      subs.set(area, followers)
    }
    await Promise.all([...subs.values()].flat().map((s) => s.start()))

    const loadBefore = loadAverage()
    ctx.startedAt = Date.now()
    const endAt = ctx.startedAt + seconds * 1000
    const [times] = await Promise.all([runFault(fault, dep, ctx.startedAt), ...areas.map((area) => area.ingest(ctx, endAt))])
    const ingestMs = Date.now() - ctx.startedAt
    const outcome = await checkOutcome(fault, ctx, areas, subs, times, ingestMs)
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
  const passed = passedEnvironmentLine()
  if (passed) console.log(passed)
  const outcomes: Outcome[] = []
  for (const fault of opts.faults) {
    const o = await soak(fault, opts.areas, checkout, base, opts.seconds).catch((err): Outcome => ({ fault, ok: false, broken: [`the run failed: ${(err as Error).stack ?? err}`], notes: [], summary: [] }))
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
