/**
 * Probe (not part of `bench/run.ts`): where the time goes when 1 or 2 worker processes apply the
 * projection benchmark's backlog. Sides take turns (1, 2, 2, 1, ...), each on a fresh deployment
 * and the same backlog; each side's window starts once every worker holds its share of the
 * partitions and has applied a batch in it, and ends when the backlog is applied (the rate while
 * every partition had events left, what bench/projection.ts reports, is given too). Over the
 * window: events/s, CPU seconds of each worker process, of this deployment's Postgres backends, of the other
 * Postgres processes (WAL writer etc.) and of nats-server, Postgres commits (pg_stat_database), the
 * workers' batches (their fanfare_batch_events / fanfare_batch_duration_seconds metrics) and what
 * the active backends were waiting on (pg_stat_activity sampled every 20 ms).
 *
 *   flock /tmp/bench.lock node_modules/.bin/bun bench/projection-probe.ts [--events=100000] [--rounds=2]
 *     [--pin]   workers on CPU 1; this deployment's Postgres backends (those open when the window
 *               starts) and a private nats-server on CPU 0; Postgres' own processes (WAL writer,
 *               checkpointer) stay unpinned
 *     [--quota=0.2]  each worker process limited to this share of one core (a cgroup v1 CPU quota of its
 *               own): the workers, not Postgres, are then the limit, as on a machine with a small
 *               core per worker process
 *     [--explain]  plans of statements slower than 300 ms go to the Postgres server log (auto_explain)
 *     [--env=K=V,K=V]  extra environment for the workers (e.g. FANFARE_BATCH_SIZE=1000)
 *     [--warmup=N]  the window starts only once N more events are applied after the workers are
 *               spread: what each process spends while its code is still being compiled (JIT) is
 *               then left out, as in a long-running deployment
 * Worker CPU is also split by thread: the JavaScript thread, JSC's compiler threads (JITWorker,
 * JSCWarmUp) and the rest (garbage collection, the allocator's scavenger, Bun's pool).
 */
import { mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs'
import postgres from 'postgres'
import { freePort } from '../core/process'
import { storedScore } from './lib/events'
import { openLeaseBucketIfExists, workersView } from '../core/leases'
import { backlogOf } from './lib/backlog'
import { deploy, publishAll, waitForWorkers, type Deployment } from './lib/fanfare'
import { cpuOf, threadSecondsOf } from './lib/child'

const arg = (name: string) => process.argv.find((a) => a.startsWith(`--${name}`))?.split('=').slice(1).join('=')
const EVENTS = Number(arg('events') ?? 100_000)
const ROUNDS = Number(arg('rounds') ?? 2)
const PIN = process.argv.includes('--pin')
const EXPLAIN = process.argv.includes('--explain')
const QUOTA = arg('quota') === undefined ? undefined : Number(arg('quota'))
const CGROUP = '/sys/fs/cgroup/cpu'
const cgroups: string[] = []
/** Puts a process (all its threads) in a CPU cgroup of its own limited to QUOTA of a core. */
function limit(pid: number) {
  const dir = `${CGROUP}/fanfare-probe-${process.pid}-${pid}`
  mkdirSync(dir)
  cgroups.push(dir)
  writeFileSync(`${dir}/cpu.cfs_period_us`, '100000')
  writeFileSync(`${dir}/cpu.cfs_quota_us`, String(Math.round(QUOTA! * 100000)))
  writeFileSync(`${dir}/cgroup.procs`, String(pid))
}
const WARMUP = Number(arg('warmup') ?? 0)
const EXTRA: Record<string, string> = Object.fromEntries((arg('env') ?? '').split(',').filter(Boolean).map((kv) => kv.split('=') as [string, string]))
/** CPU seconds of a process (all its threads); 0 once it is gone, so sums over processes hold. */
const cpuSeconds = (pid: number): number => cpuOf(pid) || 0

const pidsOf = (pattern: string): number[] =>
  Bun.spawnSync(['pgrep', '-f', pattern]).stdout.toString().split('\n').filter(Boolean).map(Number)

const pin = (pid: number, cpu: number) => Bun.spawnSync(['taskset', '-a', '-pc', String(cpu), String(pid)])

/** A short name for a statement seen in pg_stat_activity. */
function queryKind(q: string): string {
  if (q.includes('guard as')) return 'batch statement'
  if (q.includes('cross join lateral')) return 'standings read'
  if (q.startsWith('select') && q.includes('"leaderboards"')) return 'rules read'
  return q.slice(0, 70)
}

type Scrape = { batches: number; events: number; seconds: number }
async function scrape(port: number): Promise<Scrape> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()
  const value = (name: string) => text.split('\n').filter((l) => l.startsWith(name)).reduce((s, l) => s + Number(l.split(' ').pop()), 0)
  return { batches: value('fanfare_batch_events_count'), events: value('fanfare_batch_events_sum'), seconds: value('fanfare_batch_duration_seconds_sum') }
}

async function side(workers: number, natsUrl: string | undefined) {
  const d: Deployment = await deploy({ FANFARE_LEASE_TTL_MS: '3000', ...(natsUrl ? { NATS_URL: natsUrl } : {}) })
  const db = new URL(d.env.vars.DATABASE_URL).pathname.slice(1)
  const sql = postgres(d.env.vars.DATABASE_URL, { max: 2, onnotice: () => {} })
  try {
    const { FANFARE_SUBJECT_PREFIX: prefix, FANFARE_PARTITIONS: partitions } = d.env.config
    const messages = Array.from({ length: EVENTS }, (_, i) => storedScore(prefix, partitions, 'proj', i))
    const seqs = await publishAll(d.js, messages)
    const backlog = backlogOf('leaderboards', messages.map((m) => m.subject), seqs)
    if (EXPLAIN) {
      // Statements slower than 300 ms log their plan in the server log (this deployment's database only).
      await sql.unsafe(`alter database ${db} set session_preload_libraries = 'auto_explain'`)
      await sql.unsafe(`alter database ${db} set auto_explain.log_min_duration = '300ms'`)
    }
    const ports: number[] = []
    for (let i = 0; i < workers; i++) {
      const port = freePort()
      ports.push(port)
      const w = d.startWorker({ FANFARE_METRICS_PORT: String(port), ...EXTRA })
      if (PIN) pin(w.proc.pid, 1)
      if (QUOTA) limit(w.proc.pid)
    }
    // The probe's own statements in the window, subtracted from the deployment's commits.
    let own = 0
    const count = async () => (own++, (await backlog.progress(sql)).applied)
    const checkpoints = async () => (own++, new Map((await sql`select partition, seq from projection_checkpoints where projection = 'leaderboards'`).map((r) => [Number(r.partition), Number(r.seq)])))
    const seqOfLast = new Map<number, number>()
    messages.forEach((m, i) => seqOfLast.set(Number(m.subject.split('.')[2]), Math.max(seqOfLast.get(Number(m.subject.split('.')[2])) ?? 0, seqs[i])))
    await waitForWorkers(d, workers)
    // Every worker has applied a batch since holding its share: its runners are past their start.
    // A worker whose partitions were all applied before this scrape never applies another batch
    // (a quiet machine, a small backlog): the wait also ends once a partition is done, and the side
    // is then reported as not measured instead of waiting forever.
    const before = await Promise.all(ports.map(scrape))
    const waitUntil = Date.now() + 60_000
    while (true) {
      const now = await Promise.all(ports.map(scrape))
      if (now.every((s, i) => s.batches > before[i].batches)) break
      if ((await backlog.progress(sql)).partitionsDone > 0) break
      if (Date.now() > waitUntil) throw new Error(`no batch from every worker within 60 s of the spread: ${d.workers.map((w) => w.output().slice(-500)).join('\n')}`)
      await Bun.sleep(5)
    }
    if (WARMUP > 0) {
      const from = (await backlog.progress(sql)).applied
      while ((await backlog.progress(sql)).applied < Math.min(EVENTS - 1, from + WARMUP) && Date.now() < waitUntil + 120_000) await Bun.sleep(10)
    }
    const early = await backlog.progress(sql)
    if (early.partitionsDone > 0) {
      return { workers, 'not measured': `${early.partitionsDone} partition(s) applied all their events (${early.applied} of ${EVENTS}) before every worker had applied a batch after the spread${WARMUP > 0 ? ' and the warm-up' : ''}: use more --events` }
    }
    const backends = async () => (await sql`select pid from pg_stat_activity where datname = ${db} and pid <> pg_backend_pid()`).map((r) => r.pid as number)
    const myBackends = await backends()
    if (PIN) for (const pid of myBackends) pin(pid, 0)
    const postgresAll = pidsOf('^postgres')
    const nats = pidsOf(natsUrl ? `nats-server.*${new URL(natsUrl).port}` : 'nats-server -a 127.0.0.1 -p 4222')
    const commits = async () => Number((await sql`select xact_commit from pg_stat_database where datname = ${db}`)[0].xact_commit)
    const cpu = () => ({
      workers: d.workers.map((w) => cpuSeconds(w.proc.pid)),
      threads: d.workers.map((w) => threadSecondsOf(w.proc.pid)),
      backends: myBackends.reduce((s, p) => s + cpuSeconds(p), 0),
      otherPostgres: postgresAll.filter((p) => !myBackends.includes(p)).reduce((s, p) => s + cpuSeconds(p), 0),
      nats: nats.reduce((s, p) => s + cpuSeconds(p), 0),
    })
    const waits = new Map<string, number>()
    const queries = new Map<string, number>()
    let sampling = true
    const sampler = (async () => {
      const probe = postgres(d.env.vars.DATABASE_URL, { max: 1, onnotice: () => {} })
      while (sampling) {
        own++
        for (const r of await probe`select coalesce(wait_event_type || ':' || wait_event, 'CPU') as w, regexp_replace(left(query, 300), '[[:space:]]+', ' ', 'g') as q from pg_stat_activity where datname = ${db} and state = 'active' and pid <> pg_backend_pid()`) {
          waits.set(r.w, (waits.get(r.w) ?? 0) + 1)
          const q = queryKind(r.q)
          queries.set(q, (queries.get(q) ?? 0) + 1)
        }
        await Bun.sleep(20)
      }
      await probe.end()
    })()
    const load0 = readFileSync('/proc/loadavg', 'utf8').trim()
    const [n0, c0, x0, m0] = [await count(), cpu(), await commits(), await Promise.all(ports.map(scrape))]
    own = 0
    const t0 = performance.now()
    const kv = await openLeaseBucketIfExists(d.nc, d.env.config)
    const owners = Object.fromEntries((await workersView(kv!)).map((w) => [w.id.split('-').slice(-2, -1)[0], w.partitions]))
    // When each partition's last event is applied, from the window's start: a drain that ends
    // with few partitions left measures those few runners, not the workers.
    const finished = new Map<number, number>()
    let n = n0
    const deadline = Date.now() + 180_000
    let busy: { n: number; seconds: number } | undefined
    while ((n = await count()) < EVENTS && Date.now() < deadline) {
      await Bun.sleep(10)
      const t = performance.now() - t0
      for (const [p, seq] of await checkpoints()) if (!finished.has(p) && seq >= seqOfLast.get(p)!) finished.set(p, Math.round(t))
      if (!busy && finished.size > 0) busy = { n: await count(), seconds: (performance.now() - t0) / 1000 }
    }
    const seconds = (performance.now() - t0) / 1000
    for (const p of seqOfLast.keys()) if (!finished.has(p)) finished.set(p, Math.round(seconds * 1000))
    const [c1, x1, m1] = [cpu(), await commits(), await Promise.all(ports.map(scrape))]
    sampling = false
    await sampler
    const applied = n - n0
    const batches = m1.reduce((s, m, i) => s + m.batches - m0[i].batches, 0)
    const batchEvents = m1.reduce((s, m, i) => s + m.events - m0[i].events, 0)
    const batchSeconds = m1.reduce((s, m, i) => s + m.seconds - m0[i].seconds, 0)
    const us = (s: number) => Math.round((s / applied) * 1e6)
    const workerCpu = c1.workers.map((c, i) => c - c0.workers[i])
    const totalWaits = [...waits.values()].reduce((s, v) => s + v, 0)
    return {
      workers,
      window: `${applied} events in ${seconds.toFixed(2)} s`,
      rate: Math.round(applied / seconds),
      'rate while every partition had events left': busy ? Math.round((busy.n - n0) / busy.seconds) : undefined,
      'cpu us/event': {
        workers: workerCpu.map(us),
        'workers by thread (js/jit/other)': c1.threads.map((t, i) => `${us(t.js - c0.threads[i].js)}/${us(t.jit - c0.threads[i].jit)}/${us(t.other - c0.threads[i].other)}`),
        backends: us(c1.backends - c0.backends),
        otherPostgres: us(c1.otherPostgres - c0.otherPostgres),
        nats: us(c1.nats - c0.nats),
        total: us(workerCpu.reduce((a, b) => a + b, 0) + c1.backends - c0.backends + c1.otherPostgres - c0.otherPostgres + c1.nats - c0.nats),
      },
      'cpu busy (cores)': ((workerCpu.reduce((a, b) => a + b, 0) + c1.backends - c0.backends + c1.otherPostgres - c0.otherPostgres + c1.nats - c0.nats) / seconds).toFixed(2),
      'commits (without the probe\'s)': x1 - x0 - own,
      'events/commit': Math.round(applied / (x1 - x0 - own)),
      batches,
      'events/batch': Math.round(batchEvents / batches),
      'ms/batch': ((batchSeconds / batches) * 1000).toFixed(1),
      'batches in flight (mean)': (batchSeconds / seconds).toFixed(2),
      waits: Object.fromEntries([...waits].sort((a, b) => b[1] - a[1]).map(([k, v]) => [k, `${Math.round((v / totalWaits) * 100)}%`])),
      queries: Object.fromEntries([...queries].sort((a, b) => b[1] - a[1]).slice(0, 6).map(([k, v]) => [k, `${Math.round((v / totalWaits) * 100)}%`])),
      'active backends (mean)': (totalWaits / (seconds / 0.02)).toFixed(2),
      owners,
      'partition done at ms': Object.fromEntries([...finished].sort((a, b) => a[0] - b[0])),
      load: `${load0} -> ${readFileSync('/proc/loadavg', 'utf8').trim()}`,
    }
  } finally {
    await sql.end()
    await d.close()
  }
}

let nats: ReturnType<typeof Bun.spawn> | undefined
let natsUrl: string | undefined
if (PIN) {
  const port = freePort()
  const dir = `/tmp/projection-probe-nats-${process.pid}`
  nats = Bun.spawn(['taskset', '-c', '0', 'nats-server', '-a', '127.0.0.1', '-p', String(port), '-js', '-sd', dir], { stdout: 'ignore', stderr: 'ignore' })
  natsUrl = `nats://127.0.0.1:${port}`
  await Bun.sleep(500)
}
try {
  console.log(`projection probe: ${EVENTS} events, ${ROUNDS} rounds${PIN ? ', pinned (workers CPU 1, Postgres backends + nats-server CPU 0)' : ''}${QUOTA ? `, each worker limited to ${QUOTA} of a core` : ''}${Object.keys(EXTRA).length ? `, ${JSON.stringify(EXTRA)}` : ''}`)
  for (let r = 0; r < ROUNDS; r++) {
    for (const workers of r % 2 === 0 ? [1, 2] : [2, 1]) console.log(JSON.stringify(await side(workers, natsUrl)))
  }
} finally {
  nats?.kill()
  await nats?.exited
  if (PIN) Bun.spawnSync(['rm', '-rf', `/tmp/projection-probe-nats-${process.pid}`])
  // The workers have exited (each side closes its deployment): their cgroups are empty.
  for (const dir of cgroups) {
    try {
      rmdirSync(dir)
    } catch (err) {
      console.error(`could not remove ${dir}: ${err}`)
    }
  }
}
