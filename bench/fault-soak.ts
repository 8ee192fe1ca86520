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
import { mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import postgres from 'postgres'
import { TEST_PG_URL } from '../core/testing/env'
import { freePort, spawnProc, until, waitReady, type Proc } from '../test/e2e/harness'
import { privateNats, type PrivateNats } from '../test/cluster/private-nats'
import { createPrivatePostgres, type PrivatePostgres } from '../test/cluster/private-postgres'
import { apiAt, configureBoard, configuredVersion, diff, postEvents, readModel, scoreEvent, type Api, type ScoreEvent } from '../test/cluster/support'

const FAULTS = ['none', 'nats', 'nats-workers', 'workers', 'postgres', 'api'] as const
type Fault = (typeof FAULTS)[number]

const BOARD = 'soak'
const CHANNEL = `leaderboard:${BOARD}`
const LANES = 4
const BATCH = 100
/** Players per lane: 4 x 25 = 100, the most a leaderboard snapshot holds, so a view is the whole board. */
const PLAYERS_PER_LANE = 25
const SUBSCRIBERS = 3
const FAULT_AT_MS = 5000
const REPAIR_AT_MS = 7000
/** A batch still refused after this long is given up (its events counted sent, not acknowledged). */
const GIVE_UP_MS = 60_000
const DRAIN_TIMEOUT_MS = 90_000
/** The read model's version standing still this long short of the acknowledged count ends the drain. */
const STALL_MS = 20_000

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
// The checkout and the servers Fanfare runs on

type Checkout = { dir: string; commit: string }

/** A fresh clone of `repo`'s checked-out commit, its node_modules a link to the repo's. */
async function cloneCheckout(repo: string, into: string): Promise<Checkout> {
  const git = async (...args: string[]) => {
    const p = Bun.spawn(['git', ...args], { stdout: 'pipe', stderr: 'pipe' })
    const [code, out, err] = await Promise.all([p.exited, new Response(p.stdout).text(), new Response(p.stderr).text()])
    if (code !== 0) throw new Error(`git ${args.join(' ')}: ${err}`)
    return out.trim()
  }
  await git('clone', '--quiet', repo, into)
  symlinkSync(realpathSync(join(repo, 'node_modules')), join(into, 'node_modules'))
  return { dir: into, commit: await git('-C', into, 'log', '-1', '--format=%h %s') }
}

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
// A subscriber speaking the wire protocol (README, WebSocket protocol)

/**
 * One raw WebSocket following CHANNEL: applies snapshots and updates to its own view of the board,
 * keeps the version and epoch of the last frame it applied, and when its socket closes reconnects
 * and resumes with them. Counts what the protocol promises never happens silently: an update that
 * is not the next version (a gap, or a repeat), a player's score going down (an event applied out
 * of its key's order: every player's scores are sent rising).
 */
class Subscriber {
  view = new Map<string, number>()
  version = -1
  epoch = ''
  updates = 0
  snapshots = 0
  resyncs = 0
  recovered = 0
  reconnects = 0
  gaps = 0
  repeats = 0
  decreases = 0
  /** Resync snapshots older than an update already applied in their epoch (the README says never). */
  staleSnapshots = 0
  /** `subscribed` answers to a resume at another version or epoch than asked for. */
  badResumes = 0
  /** Close codes of the sockets cut under it, with their counts (a refused reconnect is a 1006). */
  closeCodes: Record<number, number> = {}
  errors: string[] = []
  private ws: WebSocket | undefined
  private stopped = false

  constructor(
    readonly name: string,
    private readonly url: () => string,
  ) {}

  async start() {
    this.connect()
    await until(`${this.name}'s snapshot`, () => this.version >= 0, 30_000, 100)
  }

  stop() {
    this.stopped = true
    this.ws?.close()
  }

  private connect() {
    const ws = new WebSocket(this.url())
    this.ws = ws
    ws.onopen = () => {
      const resume = this.version >= 0 ? { since: this.version, epoch: this.epoch } : {}
      ws.send(JSON.stringify({ op: 'subscribe', ref: 's', channel: CHANNEL, ...resume }))
    }
    ws.onmessage = (e) => this.onFrame(JSON.parse(String(e.data)))
    ws.onclose = (e) => {
      if (this.ws !== ws) return
      this.ws = undefined
      if (this.stopped) return
      this.closeCodes[e.code] = (this.closeCodes[e.code] ?? 0) + 1
      this.reconnects++
      setTimeout(() => !this.stopped && this.connect(), 250)
    }
  }

  private onFrame(f: any) {
    if (f.op === 'error') {
      this.errors.push(f.error?.code)
      // A refused subscribe (rate_limited): reconnecting subscribes again.
      if (f.ref === 's') this.ws?.close()
      return
    }
    if (f.channel !== CHANNEL) return
    if (f.op === 'snapshot') {
      this.snapshots++
      if (f.resync) this.resyncs++
      if (f.epoch === this.epoch && f.version < this.version) this.staleSnapshots++
      this.view = new Map(f.data.entries.map((e: { player: string; score: number }) => [e.player, e.score]))
      this.version = f.version
      this.epoch = f.epoch
    } else if (f.op === 'subscribed') {
      this.recovered++
      if (f.version !== this.version || f.epoch !== this.epoch) this.badResumes++
    } else if (f.op === 'update') {
      this.updates++
      const from = f.from ?? f.version
      if (f.epoch !== this.epoch && this.version > 0) this.gaps++
      else if (f.version <= this.version) this.repeats++
      else if (from !== this.version + 1) this.gaps++
      const before = this.view.get(f.data.player)
      if (before !== undefined && f.data.score < before) this.decreases++
      this.view.set(f.data.player, f.data.score)
      this.version = Math.max(this.version, f.version)
      this.epoch = f.epoch
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Ingest: four lanes of batches, resent with the same ids until acknowledged

/** What the clients sent and what was acknowledged: the oracle everything is compared with. */
type Ledger = {
  sent: number
  acked: number
  /** Events of batches given up after GIVE_UP_MS: stored or not, nobody knows. */
  givenUp: number
  /** Batches answered 202 on their first attempt yet with an event reported duplicate: an id mix-up. */
  freshDuplicates: number
  /** Events of resent batches that JetStream had stored already (de-duplicated). */
  resentDuplicates: number
  /** Each player's last acknowledged score (scores rise, so also its best). */
  latest: Map<string, number>
  /** Answers by status (`202`, `503 unavailable`, `429 rate_limited`, `0 connection`, ...). */
  answers: Record<string, number>
  /** Events acknowledged in each second of the run (how the fault and the recovery look to clients). */
  perSecond: number[]
}

function newLedger(): Ledger {
  return { sent: 0, acked: 0, givenUp: 0, freshDuplicates: 0, resentDuplicates: 0, latest: new Map(), answers: {}, perSecond: [] }
}

/** Posts a batch until it is acknowledged (202), waiting as told on 429 and briefly on anything else. */
async function sendUntilAcked(api: Api, batch: ScoreEvent[], ledger: Ledger): Promise<{ results: { duplicate: boolean }[]; attempts: number } | undefined> {
  const giveUpAt = Date.now() + GIVE_UP_MS
  for (let attempts = 1; ; attempts++) {
    const res = await postEvents(api, batch, 15_000)
    const label = res.status === 202 ? '202' : `${res.status} ${res.body?.error?.code ?? ''}`.trim()
    ledger.answers[label] = (ledger.answers[label] ?? 0) + 1
    if (res.status === 202) return { results: res.body.results, attempts }
    if (Date.now() > giveUpAt) return undefined
    await Bun.sleep(res.status === 429 ? Number(res.body?.error?.details?.retryAfterMs ?? 100) : 250)
  }
}

async function ingestLane(api: Api, run: string, lane: number, startedAt: number, endAt: number, ledger: Ledger) {
  for (let b = 0; Date.now() < endAt; b++) {
    const batch = Array.from({ length: BATCH }, (_, k) => {
      const i = b * BATCH + k
      return scoreEvent(`${run}-${lane}-${i}`, BOARD, `p${lane}-${i % PLAYERS_PER_LANE}`, i + 1)
    })
    ledger.sent += batch.length
    const answer = await sendUntilAcked(api, batch, ledger)
    if (!answer) {
      ledger.givenUp += batch.length
      continue
    }
    const duplicates = answer.results.filter((r) => r.duplicate).length
    if (answer.attempts === 1 && duplicates > 0) ledger.freshDuplicates++
    ledger.resentDuplicates += answer.attempts > 1 ? duplicates : 0
    ledger.acked += batch.length
    const second = Math.floor((Date.now() - startedAt) / 1000)
    ledger.perSecond[second] = (ledger.perSecond[second] ?? 0) + batch.length
    for (const e of batch) ledger.latest.set(e.data.player, e.data.score)
  }
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

/** The whole board through REST, page after page. */
async function restBoard(api: Api): Promise<Map<string, number>> {
  const board = new Map<string, number>()
  let after: string | null = null
  do {
    const query: string = `limit=100${after ? `&after=${encodeURIComponent(after)}` : ''}`
    const res = await fetch(`${api.baseUrl}/v1/leaderboards/${BOARD}?${query}`)
    if (res.status !== 200) throw new Error(`GET /v1/leaderboards/${BOARD}: ${res.status} ${await res.text()}`)
    const page = (await res.json()) as { entries: { player: string; score: number }[]; next: string | null }
    for (const e of page.entries) board.set(e.player, e.score)
    after = page.next
  } while (after)
  return board
}

/**
 * Waits for the workers to apply at least every acknowledged event, then for the version to stay
 * put for 3 s (an event applied twice would show up late). Gives up when the version stops moving
 * for STALL_MS short of the acknowledged count (longer than a lease's time-to-live, so a restarted
 * worker's wait for a dead one's partitions is not taken for a loss), or after DRAIN_TIMEOUT_MS.
 */
async function drain(rm: ReturnType<typeof readModel>, ledger: Ledger): Promise<{ version: number; tookMs: number }> {
  const start = Date.now()
  let version = await rm.version(CHANNEL).catch(() => 0)
  let movedAt = Date.now()
  while (version < configuredVersion(ledger.acked) && Date.now() - movedAt < STALL_MS && Date.now() - start < DRAIN_TIMEOUT_MS) {
    await Bun.sleep(250)
    const v = await rm.version(CHANNEL).catch(() => version)
    if (v !== version) movedAt = Date.now()
    version = v
  }
  for (let steady = 0; steady < 3 && Date.now() - start < DRAIN_TIMEOUT_MS; ) {
    await Bun.sleep(1000)
    const v = await rm.version(CHANNEL)
    steady = v === version ? steady + 1 : 0
    version = v
  }
  return { version, tookMs: Date.now() - start }
}

type Outcome = { fault: Fault; ok: boolean; broken: string[]; notes: string[]; summary: string[] }

async function checkOutcome(fault: Fault, d: Deployment, ledger: Ledger, subs: Subscriber[], times: FaultTimes, ingestMs: number): Promise<Outcome> {
  const broken: string[] = []
  const notes: string[] = []
  const rm = readModel(d.db.url)
  try {
    const drained = await drain(rm, ledger)
    await until('every subscriber at the read model\'s version', () => subs.every((s) => s.version >= drained.version), 30_000, 100).catch(() => {})
    const [entries, rest, dead] = [await rm.scores(BOARD), await restBoard(d.api), await rm.deadLetters()]

    // The read model against what was acknowledged.
    // The board was configured before its first score: its version counts that restart too.
    if (drained.version < configuredVersion(ledger.acked)) broken.push(`acknowledged events lost: channel version ${drained.version} < ${configuredVersion(ledger.acked)} (${ledger.acked} acknowledged)`)
    if (drained.version > configuredVersion(ledger.acked + ledger.givenUp)) broken.push(`events applied twice: channel version ${drained.version} > ${configuredVersion(ledger.acked + ledger.givenUp)} (${ledger.acked + ledger.givenUp} events sent)`)
    const entryDiff = diff(entries, ledger.latest)
    if (ledger.givenUp === 0 && entryDiff.length > 0) broken.push(`read model != last acknowledged scores: ${entryDiff.join('; ')}`)
    if (ledger.givenUp > 0) notes.push(`${ledger.givenUp} events given up after ${GIVE_UP_MS / 1000} s of refusals (stored or not: not checked)`)
    if (ledger.freshDuplicates > 0) broken.push(`${ledger.freshDuplicates} batches with fresh event ids answered duplicate`)
    if (dead > 0) broken.push(`${dead} dead letters`)
    const restDiff = diff(rest, entries)
    if (restDiff.length > 0) broken.push(`REST board != read model: ${restDiff.join('; ')}`)

    // Each subscriber against the read model's version and the REST board.
    for (const s of subs) {
      if (s.gaps > 0) broken.push(`${s.name}: ${s.gaps} silent gaps`)
      if (s.repeats > 0) broken.push(`${s.name}: ${s.repeats} repeated versions`)
      if (s.decreases > 0) broken.push(`${s.name}: ${s.decreases} scores went down (applied out of order)`)
      if (s.staleSnapshots > 0) broken.push(`${s.name}: ${s.staleSnapshots} resync snapshots older than what it held`)
      if (s.badResumes > 0) broken.push(`${s.name}: ${s.badResumes} resumes answered at another version or epoch`)
      if (s.version !== drained.version) broken.push(`${s.name}: at version ${s.version}, read model at ${drained.version}`)
      const viewDiff = diff(s.view, rest)
      if (viewDiff.length > 0) broken.push(`${s.name}: view != REST board: ${viewDiff.join('; ')}`)
      if (s.errors.length > 0) notes.push(`${s.name}: error frames ${s.errors.join(', ')}`)
    }
    const unexpected = Object.keys(ledger.answers).filter((a) => !/^(202|429 rate_limited|503 \w+|0 connection|0 timeout)$/.test(a))
    if (unexpected.length > 0) notes.push(`unexpected answers: ${unexpected.map((a) => `${a} x${ledger.answers[a]}`).join(', ')}`)

    const summary = [
      `fault ${fault}${times.injectedAt !== undefined ? `: injected at ${(times.injectedAt / 1000).toFixed(1)} s (took ${times.injectTookMs} ms), repaired at ${(times.repairedAt! / 1000).toFixed(1)} s (took ${times.repairTookMs} ms)` : ''}`,
      `ingest ${(ingestMs / 1000).toFixed(1)} s: ${ledger.sent} events sent, ${ledger.acked} acknowledged (${Math.round(ledger.acked / (ingestMs / 1000))}/s), ${ledger.givenUp} given up, ${ledger.resentDuplicates} de-duplicated on resend`,
      `acknowledged per second: ${Array.from(ledger.perSecond, (n) => n ?? 0).join(' ')}`,
      `answers: ${Object.entries(ledger.answers).map(([k, v]) => `${k} x${v}`).join(', ')}`,
      `read model: version ${drained.version} (drained in ${(drained.tookMs / 1000).toFixed(1)} s), ${entries.size} entries, dead letters ${dead}; REST board ${rest.size} entries`,
      ...subs.map(
        (s) =>
          `${s.name}: version ${s.version}, ${s.updates} updates, ${s.snapshots} snapshots (${s.resyncs} resync), ${s.recovered} resumed, ${s.reconnects} reconnects (closes ${Object.entries(s.closeCodes).map(([c, n]) => `${c} x${n}`).join(', ') || '-'}), gaps ${s.gaps}, repeats ${s.repeats}, out of order ${s.decreases}`,
      ),
    ]
    return { fault, ok: broken.length === 0, broken, notes, summary }
  } finally {
    await rm.close()
  }
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
