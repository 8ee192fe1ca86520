/**
 * `bun bench/observability-probe.ts [rounds] [profileDir]`: the end-to-end half of
 * bench/observability.ts alone (an "off" and an "on" deployment, REST at the maximum only, A B B A
 * after a warm-up and ANALYZE), and where each side's CPU goes: per 1,000 accepted events, the API
 * node's and the worker's CPU time, all threads and per thread name (main = the JS thread,
 * JITWorker, HeapHelper, ...), read from /proc. Medians per side and their ratio at the end.
 *
 * - `profileDir`: each side's processes write CPU profiles under `<profileDir>/<side>` when they
 *   stop (bun --cpu-prof; read them with bench/profile-summary.ts).
 * - PROBE_ON_ENV (JSON): variables added to the "on" side's environment, or removed from it with
 *   "" (e.g. `{"FANFARE_METRICS_PORT":""}`: tracing alone; `{"OTEL_TRACES_SAMPLER":"always_off"}`:
 *   the SDK and its context manager without a sampled span). With
 *   `{"OTEL_EXPORTER_OTLP_PROTOCOL":"http/json"}` the exported spans are counted by name.
 * - PROBE_ALL_ENV (JSON): variables for both sides' processes (e.g. BUN_OPTIONS, BUN_JSC_*).
 * - PROBE_OUTPUT_DIR: where each process's output is written at the end (e.g. JSC's
 *   `BUN_JSC_reportFTLCompileTimes=1` lines).
 */
import postgres from 'postgres'
import { readdirSync, readFileSync } from 'node:fs'
import { loadavg } from 'node:os'
import { freePort } from '../core/process'
import { deploy, waitForWorkers, type Deployment } from './lib/fanfare'
import { abba, median } from './lib/stats'
import { cpuOf } from './lib/child'
import { BOARDS } from './lib/events'
import { Subscriber } from './lib/subscriber'
import { counted, phase, restSender } from './e2e'
import { sideEnv, startScraper, startSink, type Side } from './observability'

/** CPU seconds of a process's threads by thread name; the JS thread is `main`. */
function byThread(pid: number): Map<string, number> {
  const out = new Map<string, number>()
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8')
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      const name = t === String(pid) ? 'main' : readFileSync(`/proc/${pid}/task/${t}/comm`, 'utf8').trim()
      out.set(name, (out.get(name) ?? 0) + (Number(f[11]) + Number(f[12])) / 100)
    } catch {}
  }
  return out
}
/** ms per 1,000 events by thread name, between two readings. */
const perKByThread = (a: Map<string, number>, b: Map<string, number>, events: number) =>
  new Map([...b.entries()].map(([k, v]) => [k, (1e6 * (v - (a.get(k) ?? 0))) / Math.max(1, events)]))
const show = (m: Map<string, number>) =>
  [...m.entries()]
    .filter(([, v]) => v >= 0.1)
    .sort((x, y) => y[1] - x[1])
    .map(([k, v]) => `${k} ${v.toFixed(1)}`)
    .join(', ')

const rounds = Number(process.argv[2] ?? 3)
const profileDir = process.argv[3]
const max = { concurrency: 8, batch: 250, total: 60_000 }
const sides: Side[] = ['off', 'on']
const onEnv: Record<string, string> = JSON.parse(process.env.PROBE_ON_ENV ?? '{}')
const allEnv: Record<string, string> = JSON.parse(process.env.PROBE_ALL_ENV ?? '{}')
const sink = startSink()
// Spans exported over http/json, counted by service and name (links counted apart).
const spans = new Map<string, number>()
const jsonSink = Bun.serve({
  port: 0,
  hostname: '127.0.0.1',
  fetch: async (req) => {
    type Body = { resourceSpans: { resource: { attributes: { key: string; value: { stringValue?: string } }[] }; scopeSpans: { spans: { name: string; links?: unknown[] }[] }[] }[] }
    const body = (await req.json().catch(() => ({ resourceSpans: [] }))) as Body
    for (const rs of body.resourceSpans) {
      const service = rs.resource.attributes.find((a) => a.key === 'service.name')?.value.stringValue
      for (const ss of rs.scopeSpans) {
        for (const sp of ss.spans) {
          const key = `${service} ${sp.name.split(' ')[0]}`
          spans.set(key, (spans.get(key) ?? 0) + 1)
          spans.set(`${key} (links)`, (spans.get(`${key} (links)`) ?? 0) + (sp.links?.length ?? 0))
        }
      }
    }
    return Response.json({})
  },
})
const envOf = (side: Side, metricsPort: number): Record<string, string> => {
  const json = onEnv.OTEL_EXPORTER_OTLP_PROTOCOL === 'http/json'
  const env = { ...allEnv, ...sideEnv(side, json ? `http://127.0.0.1:${jsonSink.port}` : sink.url, metricsPort) }
  if (side === 'off') return env
  for (const [k, v] of Object.entries(onEnv)) {
    if (v === '') delete env[k]
    else env[k] = v
  }
  return env
}
const deployments = {} as Record<Side, Deployment>
const ports = { api: 0, worker: 0 }
try {
  for (const side of sides) deployments[side] = await deploy()
  const apis = {} as Record<Side, Awaited<ReturnType<Deployment['startApi']>>>
  for (const side of sides) {
    if (profileDir) process.env.FANFARE_BENCH_PROFILE = `${profileDir}/${side}`
    if (side === 'on') ports.api = freePort()
    apis[side] = await deployments[side].startApi(envOf(side, ports.api))
    if (side === 'on') ports.worker = freePort()
    deployments[side].startWorker(envOf(side, ports.worker))
  }
  delete process.env.FANFARE_BENCH_PROFILE
  await Promise.all(sides.map((side) => waitForWorkers(deployments[side], 1)))
  const metricsOn = onEnv.FANFARE_METRICS_PORT !== ''
  const scraper = startScraper(metricsOn ? [`http://127.0.0.1:${ports.api}/metrics`, `http://127.0.0.1:${ports.worker}/metrics`] : [], () => [])
  type Path = { sub: Subscriber; rows: () => Promise<number>; sql: postgres.Sql; rest: ReturnType<typeof counted>; before: { rows: number } }
  const paths = {} as Record<Side, Path>
  for (const side of sides) {
    const d = deployments[side]
    const sql = postgres(d.env.vars.DATABASE_URL, { max: 1, onnotice: () => {} })
    paths[side] = {
      sub: await Subscriber.open(`ws://127.0.0.1:${apis[side].port}/v1/ws`, BOARDS),
      rows: async () => Number((await sql`select count(*)::int as n from leaderboard_entries`)[0].n),
      sql,
      rest: counted(restSender(apis[side], d.env.vars.FANFARE_INGEST_TOKEN)),
      before: { rows: 0 },
    }
  }
  // Warm-up as in bench/observability.ts, then ANALYZE (see there why).
  for (const side of sides) {
    const p = paths[side]
    await phase(p.rest, p.sub, p.rows, { rate: 1000, seconds: 1 }, p.before)
    await phase(p.rest, p.sub, p.rows, { ...max, total: 20_000 }, p.before)
    await p.sql`analyze`
  }
  type Row = { acc: number; sus: number; api: number; apiJs: number; worker: number; workerJs: number }
  const per: Record<Side, Row[]> = { off: [], on: [] }
  for (const side of abba<Side>('off', 'on', rounds)) {
    const p = paths[side]
    const api = apis[side].proc.proc.pid
    const worker = deployments[side].workers[0].proc.pid
    const t0 = { api: cpuOf(api), worker: cpuOf(worker), apiThreads: byThread(api), workerThreads: byThread(worker) }
    const r = await phase(p.rest, p.sub, p.rows, max, p.before)
    const k = (s: number) => (1e6 * s) / Math.max(1, r.accepted)
    const apiThreads = perKByThread(t0.apiThreads, byThread(api), r.accepted)
    const workerThreads = perKByThread(t0.workerThreads, byThread(worker), r.accepted)
    const row: Row = { acc: r.acceptedPerSec, sus: r.sustainedPerSec, api: k(cpuOf(api) - t0.api), apiJs: apiThreads.get('main') ?? 0, worker: k(cpuOf(worker) - t0.worker), workerJs: workerThreads.get('main') ?? 0 }
    per[side].push(row)
    console.log(`${side}: accepted ${Math.round(row.acc)}/s sustained ${Math.round(row.sus)}/s; CPU ms/1k events: API ${row.api.toFixed(1)} (JS ${row.apiJs.toFixed(1)}), worker ${row.worker.toFixed(1)} (JS ${row.workerJs.toFixed(1)}); load ${loadavg()[0].toFixed(1)}`)
    console.log(`  ${side} by thread, ms/1k: API ${show(apiThreads)}; worker ${show(workerThreads)}`)
  }
  for (const key of ['acc', 'sus', 'api', 'apiJs', 'worker', 'workerJs'] as const) {
    const on = median(per.on.map((r) => r[key]))
    const off = median(per.off.map((r) => r[key]))
    console.log(`median ${key}: on ${on.toFixed(1)} off ${off.toFixed(1)} ratio ${(on / off).toFixed(2)}`)
  }
  if (metricsOn) {
    const text = await (await fetch(`http://127.0.0.1:${ports.worker}/metrics`)).text()
    console.log(`"on" worker: ${text.split('\n').filter((l) => /^fanfare_batch_events_(sum|count)/.test(l)).join(', ')}`)
  }
  if (process.env.PROBE_OUTPUT_DIR) {
    for (const side of sides) {
      await Bun.write(`${process.env.PROBE_OUTPUT_DIR}/api-${side}.log`, apis[side].proc.output())
      await Bun.write(`${process.env.PROBE_OUTPUT_DIR}/worker-${side}.log`, deployments[side].workers[0].output())
    }
  }
  await scraper.stop()
  for (const side of sides) {
    paths[side].sub.close()
    await paths[side].sql.end()
  }
  console.log(`protobuf sink: ${JSON.stringify(sink.stats())}; scrapes ${scraper.scrapes()}`)
  if (spans.size > 0) console.log(`spans exported: ${JSON.stringify(Object.fromEntries(spans))}`)
} finally {
  sink.stop()
  jsonSink.stop(true)
  await Promise.all(Object.values(deployments).map((d) => d.close()))
}
process.exit(0)
