/**
 * `bun bench/cluster-soak.ts [--repo=<path>] [--seconds=50] [--majority | --rolling] [--keep]`: the outside check of the
 * README's "Running on a NATS cluster". Three nats-servers started with the README's command line
 * (its flags, plus each server's own client, monitoring and route ports: one machine), Fanfare from
 * a fresh `git clone` run as the README says (`npm run migrate` with `FANFARE_REPLICAS=3` and a
 * `NATS_URL` listing the three, two API nodes, two worker processes), on a database of its own.
 * The machine's Postgres and NATS are never stopped.
 *
 * Four lanes send score batches over REST (two to each API node), resending a refused batch with the
 * same ids; four raw WebSocket subscribers (two on each node) follow the board and resume with their
 * version. At 5 s the server leading the event stream (read from the servers' monitoring
 * endpoint, `/jsz?streams=1`) is SIGKILLed, at 20 s started again, at 35 s the leader is killed
 * again (another server than the first when the first leads again), and it is started again once
 * ingest ends. The run exits non-zero if an acknowledged event is lost or applied twice, a key's
 * scores go backwards, a subscriber saw a silent gap or ends unequal to the REST board, or ingest
 * stood still longer than MAX_SILENCE_MS (nats-server 2.9 elects after 4-9 s). `--majority`: at 5 s
 * the leader and another server are SIGKILLed (no stream has a leader), at 15 s both are started
 * again; the same checks but the silence bound. `--rolling`: from 5 s each server in turn is
 * stopped (SIGTERM) and started again, the next once every stream's replicas are current.
 * Fanfare's variables in the soak's environment reach its processes and are printed first, as in
 * the fault soak: `FANFARE_BATCH_SIZE=50 bun bench/cluster-soak.ts`, say.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import type { Subprocess } from 'bun'
import { findNatsServer, waitUntilReady } from '../scripts/embedded-nats'
import { freePort, spawnProc, until, waitReady, type Proc } from '../test/e2e/harness'
import { apiAt, configureBoard, type Api } from '../test/cluster/support'
import { stallDiagnosis } from './lib/stall-diagnosis'
import { LANES, boardSubscriber, cloneCheckout, interruptTeardowns, passedEnvironmentLine, scratchDatabase, type BoardSubscriber, ingestLane, judge, newLedger } from './lib/soak'

const SERVERS = 3
const SUBSCRIBERS_PER_NODE = 2
/** The longest ingest may stand still around a kill: the election (4-9 s) plus a publish timeout (5 s) and a loaded machine's slack. */
const MAX_SILENCE_MS = 20_000

type Options = { repo: string; seconds: number; keep: boolean; majority: boolean; rolling: boolean }

function parseOptions(argv: string[]): Options {
  const value = (name: string) => argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3)
  return {
    repo: resolve(value('repo') ?? resolve(import.meta.dir, '..')),
    seconds: Number(value('seconds') ?? 50),
    keep: argv.includes('--keep'),
    majority: argv.includes('--majority'),
    rolling: argv.includes('--rolling'),
  }
}

/** One nats-server of the cluster, started with the README's flags; killed and started again on the same ports and store. */
type NatsNode = { name: string; url: string; monitor: string; start: () => Promise<void>; kill: (signal?: 'SIGKILL' | 'SIGTERM') => Promise<void>; running: () => boolean; log: () => string }

function natsNodes(base: string): NatsNode[] {
  const binary = findNatsServer()
  if (!binary) throw new Error('nats-server is not installed')
  const ports = Array.from({ length: SERVERS }, () => ({ client: freePort(), route: freePort(), monitor: freePort() }))
  const routes = ports.map((p) => `nats://127.0.0.1:${p.route}`).join(',')
  return ports.map((p, i) => {
    const name = `nats-${i + 1}`
    const store = join(base, name)
    mkdirSync(store, { recursive: true })
    let proc: Subprocess | undefined
    let log = ''
    const url = `nats://127.0.0.1:${p.client}`
    return {
      name,
      url,
      monitor: `http://127.0.0.1:${p.monitor}`,
      running: () => proc !== undefined && proc.exitCode === null,
      log: () => log,
      start: async () => {
        // The README's line: nats-server -js -sd /data --name nats-1 --cluster_name fanfare --cluster nats://0.0.0.0:6222 --routes ...
        const cmd = [binary, '-js', '-sd', store, '--name', name, '-a', '127.0.0.1', '-p', String(p.client), '-m', String(p.monitor), '--cluster_name', 'fanfare', '--cluster', `nats://127.0.0.1:${p.route}`, '--routes', routes]
        const started = Bun.spawn(cmd, { stdout: 'ignore', stderr: 'pipe' })
        proc = started
        void (async () => {
          const decoder = new TextDecoder()
          for await (const chunk of started.stderr as ReadableStream<Uint8Array>) log = (log + decoder.decode(chunk)).slice(-50_000)
        })()
        await waitUntilReady(url, started, 15_000)
      },
      kill: (signal = 'SIGKILL') => {
        const p = proc
        proc = undefined
        if (!p || p.exitCode !== null) return Promise.resolve()
        p.kill(signal)
        return p.exited.then(() => {})
      },
    }
  })
}

/** The server leading `stream`, as the monitoring endpoint of any running server tells it. */
async function leaderOf(nodes: NatsNode[], stream: string): Promise<string | undefined> {
  for (const n of nodes.filter((n) => n.running())) {
    const jsz = (await fetch(`${n.monitor}/jsz?streams=1`, { signal: AbortSignal.timeout(2000) })
      .then((r) => r.json())
      .catch(() => undefined)) as { account_details?: { stream_detail?: { name: string; cluster?: { leader?: string } }[] }[] } | undefined
    const detail = jsz?.account_details?.flatMap((a) => a.stream_detail ?? []).find((s) => s.name === stream)
    if (detail?.cluster?.leader) return detail.cluster.leader
  }
  return undefined
}

/**
 * Whether every stream has a leader whose replicas are all current: each stream as its leader's
 * monitoring endpoint reports it (another server's view of a follower is not kept up to date).
 */
async function allCurrent(nodes: NatsNode[]): Promise<boolean> {
  type Detail = { name: string; cluster?: { leader?: string; replicas?: { current: boolean }[] } }
  const names = new Set<string>()
  const good = new Set<string>()
  for (const n of nodes.filter((n) => n.running())) {
    const jsz = (await fetch(`${n.monitor}/jsz?streams=1`, { signal: AbortSignal.timeout(2000) })
      .then((r) => r.json())
      .catch(() => undefined)) as { account_details?: { stream_detail?: Detail[] }[] } | undefined
    if (!jsz) return false
    for (const d of jsz.account_details?.flatMap((a) => a.stream_detail ?? []) ?? []) {
      names.add(d.name)
      const replicas = d.cluster?.replicas ?? []
      if (d.cluster?.leader === n.name && replicas.length === SERVERS - 1 && replicas.every((r) => r.current)) good.add(d.name)
    }
  }
  return names.size > 0 && [...names].every((name) => good.has(name))
}

const teardowns = interruptTeardowns()

async function main() {
  const opts = parseOptions(process.argv.slice(2))
  if (!(opts.seconds >= 40)) throw new Error(`--seconds must be at least 40 (the second kill comes at 35 s), got ${opts.seconds}`)
  const base = mkdtempSync(join(tmpdir(), 'fanfare-cluster-soak-'))
  const checkout = await cloneCheckout(opts.repo, join(base, 'repo'))
  console.log(`cluster soak of ${opts.repo} at ${checkout.commit} (clone in ${checkout.dir})`)
  // Fanfare's variables in this environment reach its processes, as in the fault soak (say,
  // a rate limit lifted); the soak's own (FANFARE_REPLICAS, tokens, ...) win over them.
  const passed = passedEnvironmentLine()
  if (passed) console.log(passed)
  const id = `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`
  const db = await scratchDatabase(`fanfare_cluster_soak_${id}`)
  const dbUrl = db.url

  const nodes = natsNodes(base)
  const procs: Proc[] = []
  const subs: BoardSubscriber[] = []
  const events: string[] = []
  const note = (startedAt: number, what: string) => events.push(`${((Date.now() - startedAt) / 1000).toFixed(1)} s: ${what}`)
  /** `keepDb`: a failed run leaves its database for a look at what the workers wrote (the NATS stores stay under `base`). */
  const teardown = async (keepDb = false) => {
    teardowns.delete(teardown)
    for (const s of subs) s.stop()
    await Promise.all(procs.map((p) => p.stop('SIGKILL')))
    await Promise.all(nodes.map((n) => n.kill()))
    const logs = join(base, 'logs')
    mkdirSync(logs, { recursive: true })
    for (const p of procs) writeFileSync(join(logs, `${p.name}.log`), p.output())
    for (const n of nodes) writeFileSync(join(logs, `${n.name}.log`), n.log())
    if (keepDb) console.log(`\ndatabase kept: ${dbUrl} (drop it with: psql -h 127.0.0.1 -U postgres -c 'DROP DATABASE ${new URL(dbUrl).pathname.slice(1)}')`)
    else await db.drop().catch(() => {})
  }
  teardowns.add(teardown)
  let ok = false
  /** The verdict was reached: a run that broke a promise keeps its database; one that failed to start does not. */
  let judged = false
  try {
    await Promise.all(nodes.map((n) => n.start()))
    const vars: Record<string, string> = {
      DATABASE_URL: dbUrl,
      NATS_URL: nodes.map((n) => n.url).join(','),
      FANFARE_REPLICAS: '3',
      HOST: '127.0.0.1',
      FANFARE_INGEST_TOKEN: `soak-ingest-${id}`,
      FANFARE_ADMIN_TOKEN: `soak-admin-${id}`,
      LOG_LEVEL: process.env.LOG_LEVEL ?? 'warn',
      FANFARE_KEY_OPS_PER_SECOND: process.env.FANFARE_KEY_OPS_PER_SECOND ?? '10000000',
    }
    const migrate = spawnProc('migrate', 'core/db/migrate-cli.ts', vars, checkout.dir)
    procs.push(migrate)
    if ((await migrate.proc.exited) !== 0) throw new Error(`migrate exited ${migrate.proc.exitCode}:\n${migrate.output()}`)
    const apis: Api[] = []
    for (let i = 1; i <= 2; i++) {
      const port = freePort()
      procs.push(spawnProc(`api-${i}`, 'api/src/main.ts', { ...vars, PORT: String(port) }, checkout.dir))
      procs.push(spawnProc(`workers-${i}`, 'stream-workers/src/main.ts', vars, checkout.dir))
      apis.push(apiAt(port, vars))
    }
    for (const api of apis) await waitReady(api.baseUrl, procs.filter((p) => p.name !== 'migrate'), 60_000)
    await configureBoard(apis[0], 'soak', 'latest')
    apis.forEach((api, n) => {
      for (let i = 1; i <= SUBSCRIBERS_PER_NODE; i++) subs.push(boardSubscriber(`subscriber ${n + 1}.${i}`, () => `${api.baseUrl.replace('http', 'ws')}/v1/ws`))
    })
    await Promise.all(subs.map((s) => s.start()))

    const ledger = newLedger()
    const startedAt = Date.now()
    const endAt = startedAt + opts.seconds * 1000
    const at = (ms: number) => Bun.sleep(Math.max(0, startedAt + ms - Date.now()))
    const killLeader = async (avoid?: string) => {
      const leader = await leaderOf(nodes, 'FANFARE')
      const victim = nodes.find((n) => n.name === leader && n.name !== avoid) ?? nodes.find((n) => n.running() && n.name !== avoid)!
      note(startedAt, `SIGKILL ${victim.name} (event stream leader: ${leader})`)
      await victim.kill()
      return victim
    }
    const faults = (async () => {
      await at(5000)
      if (opts.rolling) {
        // An upgrade's rolling restart: each server stopped (SIGTERM) and started again, the next
        // one once every stream reports its replicas current again.
        for (const n of nodes) {
          note(startedAt, `SIGTERM ${n.name} (event stream leader: ${await leaderOf(nodes, 'FANFARE')})`)
          await n.kill('SIGTERM')
          await n.start()
          await until(`every stream current after ${n.name}'s restart`, () => allCurrent(nodes), 60_000, 500)
          note(startedAt, `${n.name} back, every stream current`)
        }
        return
      }
      const first = await killLeader()
      if (opts.majority) {
        // Two of three down: no stream has a leader until one returns.
        const second = await killLeader(first.name)
        await at(15_000)
        await Promise.all([first.start(), second.start()])
        note(startedAt, `${first.name} and ${second.name} started again`)
        return
      }
      await at(20_000)
      await first.start()
      note(startedAt, `${first.name} started again`)
      await at(35_000)
      const second = await killLeader(first.name)
      await until('ingest to end', () => Date.now() >= endAt, opts.seconds * 1000 + 60_000, 200)
      await second.start()
      note(startedAt, `${second.name} started again; event stream leader ${await leaderOf(nodes, 'FANFARE')}`)
    })()
    // Who leads the event stream, as the servers tell it every 500 ms: when ingest stands still,
    // this tells an election that took long (no leader) from a leader the API nodes did not reach.
    const leadership = (async () => {
      let last: string | undefined = 'unknown'
      while (Date.now() < endAt) {
        const leader = await leaderOf(nodes, 'FANFARE').catch(() => undefined)
        if (leader !== last) note(startedAt, `event stream leader: ${leader ?? 'none'}`)
        last = leader
        await Bun.sleep(500)
      }
    })()
    // What an orchestrator's readiness probe sees: each node's /readyz every 250 ms, its not-ready spells noted.
    const readiness = apis.map((api, i) => {
      const spells: string[] = []
      let since: number | undefined
      let why = ''
      const poll = (async () => {
        while (Date.now() < endAt) {
          const res = await fetch(`${api.baseUrl}/readyz`, { signal: AbortSignal.timeout(5000) }).catch(() => undefined)
          const ready = res?.status === 200
          const body = ready ? '' : res ? await res.text() : 'no answer'
          if (!ready && since === undefined) (since = Date.now()), (why = body.replace(/.*"details":/, '').slice(0, 200))
          if (ready && since !== undefined) {
            spells.push(`${((since - startedAt) / 1000).toFixed(1)} s for ${((Date.now() - since) / 1000).toFixed(1)} s (${why})`)
            since = undefined
          }
          await Bun.sleep(250)
        }
        if (since !== undefined) spells.push(`${((since - startedAt) / 1000).toFixed(1)} s until the end (${why})`)
      })()
      return { name: `api-${i + 1}`, spells, poll }
    })
    await Promise.all([faults, leadership, ...readiness.map((r) => r.poll), ...Array.from({ length: LANES }, (_, lane) => ingestLane(apis[lane % apis.length], id, lane, startedAt, endAt, ledger))])
    for (const r of readiness) note(startedAt, `${r.name} /readyz not 200: ${r.spells.join('; ') || 'never'}`)
    const verdict = await judge(apis[0], dbUrl, ledger, subs, Date.now() - startedAt, {
      whenShort: (_, version) => stallDiagnosis({ natsUrls: nodes.filter((n) => n.running()).map((n) => n.url), databaseUrl: dbUrl, stream: 'FANFARE', version, admin: apis[0] }),
    })
    if (!opts.majority && ledger.longestSilence.ms > MAX_SILENCE_MS) verdict.broken.push(`ingest stood still ${(ledger.longestSilence.ms / 1000).toFixed(1)} s (more than ${MAX_SILENCE_MS / 1000} s)`)
    const exited = procs.filter((p) => p.name !== 'migrate' && p.proc.exitCode !== null)
    if (exited.length > 0) verdict.broken.push(`processes exited: ${exited.map((p) => `${p.name} (${p.proc.exitCode})`).join(', ')}`)
    ok = verdict.broken.length === 0
    judged = true
    console.log(`\n=== ${ok ? 'OK' : 'BROKEN'}`)
    for (const line of [`load average ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}`, ...events, ...verdict.summary, ...verdict.notes.map((n) => `note: ${n}`), ...verdict.broken.map((b) => `BROKEN: ${b}`)]) console.log(`  ${line}`)
  } finally {
    await teardown(judged && !ok)
    if (ok && !opts.keep) rmSync(base, { recursive: true, force: true })
    else console.log(`\nlogs kept in ${base}/logs/`)
  }
  process.exit(ok ? 0 : 1)
}

await main()
