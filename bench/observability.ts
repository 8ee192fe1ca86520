/**
 * (9) What observability costs: fan-out and end to end with metrics scraped and tracing exported
 * (1% sampled, OTLP/HTTP to a local sink) against the same with both off, in the same run. Each
 * side has its own deployment (database, streams, API node, worker), so neither sees the other's
 * traffic. The sides take turns in A B B A blocks after an unrecorded warm-up (fan-out 2 runs per
 * side, end to end 6) and each figure is the median of its side's runs; the notes give each side's
 * range. Target: the "on" side keeps at least 0.9x the "off" side's throughput.
 *
 * - Fan-out: change runs published straight to the change stream, as in bench/fanout.ts; on the
 *   "on" side 1 run in 100 carries a sampled `traceparent`, as a worker's sampled batch would, so
 *   the API node makes push spans for those.
 * - End to end: REST batches at a fixed rate and at the maximum (bench/e2e.ts's phases); on the "on"
 *   side the API node and the worker sample 1% of requests (parentbased_traceidratio 0.01) and
 *   trace them through JetStream, the worker, Postgres and the push. The API node's and the
 *   worker's CPU time per accepted event at the maximum is read from /proc as well.
 * - Metrics: the "on" side's processes serve FANFARE_METRICS_PORT, scraped every second (ten times
 *   Prometheus' usual rate).
 */
import postgres from 'postgres'
import type { ChangeRun } from '../core/channels'
import { subjects } from '../core/events'
import { freePort } from '../core/process'
import { headers as natsHeaders } from '@nats-io/transport-node'
import { pick, type BenchContext } from './lib/context'
import { deploy, waitForWorkers, type Deployment } from './lib/fanfare'
import type { Figure } from './lib/report'
import { abba, median, nowMs } from './lib/stats'
import { fmt } from './lib/report'
import { cpuOf } from './lib/child'
import { loadavg } from 'node:os'
import { BOARDS } from './lib/events'
import { Subscriber } from './lib/subscriber'
import { counted, phase, restSender } from './e2e'
import { scenario } from './fanout'

export type Side = 'off' | 'on'

/** A local OTLP/HTTP sink: accepts and counts what is exported, as a collector would. */
export function startSink() {
  let requests = 0
  let bytes = 0
  const server = Bun.serve({
    port: 0,
    hostname: '127.0.0.1',
    fetch: async (req) => {
      requests++
      bytes += (await req.arrayBuffer()).byteLength
      return new Response(new Uint8Array(), { headers: { 'content-type': 'application/x-protobuf' } })
    },
  })
  return { url: `http://127.0.0.1:${server.port}`, stats: () => ({ requests, bytes }), stop: () => server.stop(true) }
}

/** Scrapes metrics ports (`urls`, and those `later` adds) every `everyMs` until stopped; counts the scrapes. */
export function startScraper(urls: string[], later: () => string[], everyMs = 1000) {
  let scrapes = 0
  let stopped = false
  const loop = (async () => {
    while (!stopped) {
      await Promise.all([...urls, ...later()].map((u) => fetch(u).then((r) => r.text()).then(() => scrapes++, () => {})))
      await Bun.sleep(everyMs)
    }
  })()
  return {
    scrapes: () => scrapes,
    stop: async () => {
      stopped = true
      await loop
    },
  }
}

/** The environment of a side: tracing and a metrics port on, or nothing. */
export function sideEnv(side: Side, sinkUrl: string, metricsPort: number): Record<string, string> {
  if (side === 'off') return {}
  return {
    OTEL_EXPORTER_OTLP_ENDPOINT: sinkUrl,
    OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf',
    OTEL_TRACES_SAMPLER: 'parentbased_traceidratio',
    OTEL_TRACES_SAMPLER_ARG: '0.01',
    FANFARE_METRICS_PORT: String(metricsPort),
  }
}

/** Change runs of one update each; every `tracedEvery`th carries a sampled traceparent. */
function runPublisher(d: Deployment, tracedEvery: number | undefined) {
  const prefix = d.env.config.FANFARE_SUBJECT_PREFIX
  let pending: Promise<unknown>[] = []
  let k = 0
  const hex = (n: number) => Array.from(crypto.getRandomValues(new Uint8Array(n)), (b) => b.toString(16).padStart(2, '0')).join('')
  return {
    round: (channels: string[], version: number) => {
      for (const channel of channels) {
        const run: ChangeRun = { channel, version, epoch: 'bench', changes: [{ player: 'p', score: nowMs(), previous: null }], at: new Date().toISOString() }
        let opts: { headers: ReturnType<typeof natsHeaders> } | undefined
        if (tracedEvery && ++k % tracedEvery === 0) {
          const h = natsHeaders()
          h.set('traceparent', `00-${hex(16)}-${hex(8)}-01`)
          opts = { headers: h }
        }
        pending.push(d.js.publish(subjects.change(prefix, channel), JSON.stringify(run), opts))
      }
    },
    flush: async () => {
      const p = pending
      pending = []
      await Promise.all(p)
    },
    close: () => {},
  }
}

export async function observability(ctx: BenchContext): Promise<Figure[]> {
  const sink = startSink()
  const figures: Figure[] = []
  const sides: Side[] = ['off', 'on']
  const deployments = {} as Record<Side, Deployment>
  // Ports taken just before their process starts: thousands of client sockets take ephemeral ports meanwhile.
  const metricsPorts = { off: 0, on: 0 }
  let workerMetricsPort = 0
  try {
    for (const side of sides) deployments[side] = await deploy()
    const apis = {} as Record<Side, Awaited<ReturnType<Deployment['startApi']>>>
    for (const side of sides) {
      metricsPorts[side] = freePort()
      const extra = sideEnv(side, sink.url, metricsPorts[side])
      apis[side] = await deployments[side].startApi(extra)
    }
    const scraper = startScraper([`http://127.0.0.1:${metricsPorts.on}/metrics`], () => (workerMetricsPort ? [`http://127.0.0.1:${workerMetricsPort}/metrics`] : []))

    // Sides take turns in A B B A blocks (see abba) so that drift over the run (a busy shared
    // machine, a warming JIT, growing tables) weighs on both alike; figures are medians per side.
    const spread = (xs: number[]) => `${fmt(Math.min(...xs))}-${fmt(Math.max(...xs))}`

    // Fan-out.
    const n = pick(ctx, 50, 1000)
    const layouts = pick(ctx, [1], [1, 100])
    let s = 0
    for (const layout of layouts) {
      const label = `${n} clients, ${layout === 1 ? '1 channel' : `${layout} channels`}`
      const res: Record<Side, Awaited<ReturnType<typeof scenario>>[]> = { off: [], on: [] }
      for (const side of abba<Side>('off', 'on', 2)) {
        ctx.log(`observability fan-out, ${label}, ${side}`)
        const channels = Array.from({ length: layout }, (_, i) => `leaderboard:o${s}c${i}`)
        s++
        const r = await scenario(ctx, 'fanfare', `ws://127.0.0.1:${apis[side].port}/v1/ws`, runPublisher(deployments[side], side === 'on' ? 100 : undefined), n, channels, {
          pacedPerSec: Math.max(2, Math.round(20_000 / n)),
          pacedRounds: Math.max(10, Math.round(pick(ctx, 0.5, 2) * Math.max(2, Math.round(20_000 / n)))),
          burstRounds: Math.max(10, Math.round(pick(ctx, 500, 300_000) / n)),
        })
        res[side].push(r)
        ctx.log(`  ${side}: ${Math.round(r.rate)} deliveries/s, p50 ${r.p50.toFixed(2)} ms, p99 ${r.p99.toFixed(2)} ms`)
      }
      const rate = (side: Side) => median(res[side].map((r) => r.rate))
      const p99 = (side: Side) => median(res[side].map((r) => r.p99))
      figures.push(
        { group: 'observability', name: `fan-out deliveries/s with metrics + tracing on, ${label}`, unit: '/s', value: rate('on'), baselineName: 'same, both off', baseline: rate('off'), target: { op: '>=', ratio: 0.9 } },
        { group: 'observability', name: `fan-out p99 with metrics + tracing on, ${label}`, unit: 'ms', value: p99('on'), baselineName: 'same, both off', baseline: p99('off') },
      )
    }

    // End to end: a worker per side (the "on" one with tracing and its metrics port).
    deployments.off.startWorker()
    workerMetricsPort = freePort()
    deployments.on.startWorker(sideEnv('on', sink.url, workerMetricsPort))
    await Promise.all(sides.map((side) => waitForWorkers(deployments[side], 1)))
    const rate = pick(ctx, 200, 5000)
    const seconds = pick(ctx, 1, 5)
    const max = pick(ctx, { concurrency: 4, batch: 100, total: 1000 }, { concurrency: 8, batch: 250, total: 60_000 })
    const runsPerSide = pick(ctx, 1, 6)
    type Paths = { sub: Subscriber; rows: () => Promise<number>; analyze: () => Promise<unknown>; rest: ReturnType<typeof counted>; before: { rows: number }; close: () => Promise<void> }
    const paths = {} as Record<Side, Paths>
    for (const side of sides) {
      const d = deployments[side]
      const sql = postgres(d.env.vars.DATABASE_URL, { max: 1, onnotice: () => {} })
      const sub = await Subscriber.open(`ws://127.0.0.1:${apis[side].port}/v1/ws`, BOARDS)
      paths[side] = {
        sub,
        rows: async () => Number((await sql`select count(*)::int as n from leaderboard_entries`)[0].n),
        analyze: () => sql`analyze`,
        rest: counted(restSender(apis[side], d.env.vars.FANFARE_INGEST_TOKEN)),
        before: { rows: 0 },
        close: async () => {
          sub.close()
          await sql.end()
        },
      }
    }
    // Each run is a paced phase then a maximum-rate phase; what the API node and the worker spent
    // on the maximum is read from /proc (CPU time per accepted event varies less than throughput
    // on a shared machine: it does not count the time a process waits for a core).
    type Run = { paced: Awaited<ReturnType<typeof phase>>; max: Awaited<ReturnType<typeof phase>>; apiCpuPerK: number; workerCpuPerK: number }
    const results: Record<Side, Run[]> = { off: [], on: [] }
    const pids = (side: Side) => ({ api: apis[side].proc.proc.pid, worker: deployments[side].workers[0].proc.pid })
    try {
      // Warm-up, not recorded: both phases on each side, so that the JIT has seen the maximum rate.
      for (const side of sides) {
        const p = paths[side]
        ctx.log(`observability end-to-end, ${side}: warm-up (not recorded)`)
        await phase(p.rest, p.sub, p.rows, { rate: Math.min(rate, 1000), seconds: 1 }, p.before)
        await phase(p.rest, p.sub, p.rows, { ...max, total: Math.round(max.total / 3) }, p.before)
      }
      // Statistics for both sides' read models, as autovacuum would take them after the warm-up's
      // inserts. Without them (autovacuum is off on some servers, this one included) a worker's
      // prepared lookup can keep the plan made while its table was nearly empty: a scan of a whole
      // board per key, which stalled one partition at a time for tens of seconds, on either side
      // (bench/findings.md, Observability, 2026-11-28 afternoon). ANALYZE invalidates those plans.
      for (const side of sides) await paths[side].analyze()
      for (const side of abba<Side>('off', 'on', runsPerSide)) {
        const p = paths[side]
        ctx.log(`observability end-to-end, ${side}: ${rate}/s for ${seconds} s, then the maximum (load ${loadavg().map((l) => l.toFixed(1)).join(' ')})`)
        const paced = await phase(p.rest, p.sub, p.rows, { rate, seconds }, p.before)
        const { api, worker } = pids(side)
        const cpu0 = { api: cpuOf(api), worker: cpuOf(worker) }
        const top = await phase(p.rest, p.sub, p.rows, max, p.before)
        const perK = (s: number) => (1000 * 1000 * s) / Math.max(1, top.accepted)
        const run: Run = { paced, max: top, apiCpuPerK: perK(cpuOf(api) - cpu0.api), workerCpuPerK: perK(cpuOf(worker) - cpu0.worker) }
        results[side].push(run)
        ctx.log(
          `  ${side}: p50 ${paced.latency.p50.toFixed(1)} p99 ${paced.latency.p99.toFixed(1)} ms at ${rate}/s; max ${Math.round(top.acceptedPerSec)} accepted/s, ${Math.round(top.sustainedPerSec)} delivered/s; CPU ms per 1,000 events: API ${run.apiCpuPerK.toFixed(0)}, worker ${run.workerCpuPerK.toFixed(0)}`,
        )
      }
    } finally {
      for (const side of sides) await paths[side].close()
    }
    const figure = (name: string, unit: string, f: (r: Run) => number, target?: Figure['target']): Figure => ({
      group: 'observability', name, unit, value: median(results.on.map(f)), baselineName: 'same, both off', baseline: median(results.off.map(f)), ...(target ? { target } : {}),
    })
    figures.push(
      figure(`e2e REST p50 at ${rate}/s, metrics + tracing on`, 'ms', (r) => r.paced.latency.p50),
      figure(`e2e REST p99 at ${rate}/s, metrics + tracing on`, 'ms', (r) => r.paced.latency.p99),
      figure('e2e max accepted events/s (REST), metrics + tracing on', '/s', (r) => r.max.acceptedPerSec, { op: '>=', ratio: 0.9 }),
      figure('e2e max sustained events/s, metrics + tracing on', '/s', (r) => r.max.sustainedPerSec, { op: '>=', ratio: 0.9 }),
    )
    // Not in smoke mode: /proc counts CPU in 10 ms ticks, and a tiny load may cost none.
    if (ctx.mode === 'full') {
      figures.push(
        figure('e2e API node CPU ms per 1,000 events at the max, metrics + tracing on', 'ms', (r) => r.apiCpuPerK),
        figure('e2e worker CPU ms per 1,000 events at the max, metrics + tracing on', 'ms', (r) => r.workerCpuPerK),
      )
    }
    const each: [string, (r: Run) => number][] = [
      ['max accepted/s', (r) => r.max.acceptedPerSec],
      ['max sustained/s', (r) => r.max.sustainedPerSec],
      ['API CPU ms/1k events', (r) => r.apiCpuPerK],
      ['worker CPU ms/1k events', (r) => r.workerCpuPerK],
    ]
    for (const [what, f] of each) {
      ctx.notes.push(`observability e2e, ${what}, ${runsPerSide} runs per side (median, range): on ${fmt(median(results.on.map(f)))} (${spread(results.on.map(f))}), off ${fmt(median(results.off.map(f)))} (${spread(results.off.map(f))})`)
    }
    await scraper.stop()
    const exported = sink.stats()
    ctx.notes.push(`observability: the "on" side exported ${exported.requests} OTLP requests (${Math.round(exported.bytes / 1024)} KiB) and was scraped ${scraper.scrapes()} times`)
    if (exported.requests === 0) ctx.notes.push('observability: no spans reached the sink: tracing was not on')
  } finally {
    sink.stop()
    await Promise.all(Object.values(deployments).map((d) => d.close()))
  }
  return figures
}
