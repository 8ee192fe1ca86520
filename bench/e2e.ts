/**
 * (2) End to end: score events sent over REST (batched) and over WebSocket at fixed offered rates
 * and at the maximum, through a real API node and a real stream-worker process, to a WebSocket
 * subscriber of every board. Baseline: the bare pipeline (raw JetStream publish → raw consumer →
 * one batched upsert → raw Bun publish) in the same run, at the same offered rates, the paths
 * taking turns at each rate (3 phases each in full mode, latencies pooled).
 */
import postgres from 'postgres'
import { freePort } from '../core/process'
import { startChild } from './lib/child'
import { BUN, pick, type BenchContext } from './lib/context'
import { BOARDS, scoreEvent, storedScore } from './lib/events'
import { deploy, waitForWorkers, type Deployment } from './lib/fanfare'
import type { Figure } from './lib/report'
import { median, nowMs, summarize, type LatencySummary } from './lib/stats'
import { Subscriber } from './lib/subscriber'
import { openFrameSocket } from './lib/frame-socket'

type Send = (count: number) => Promise<number>
type PhaseResult = { resyncs: number; accepted: number; acceptedPerSec: number; latency: LatencySummary; latencies: number[]; lagMs: number; sustainedPerSec: number }

/** Runs one load phase and measures it at the subscriber and in Postgres. */
export async function phase(
  send: Send,
  sub: Subscriber,
  rows: () => Promise<number>,
  load: { rate: number; seconds: number } | { concurrency: number; batch: number; total: number },
  before: { rows: number },
): Promise<PhaseResult> {
  // Start from a drained pipeline so that a phase does not pay for the backlog of the one before.
  const drainDeadline = Date.now() + 90_000
  while ((await rows()) < before.rows && Date.now() < drainDeadline) await Bun.sleep(50)
  await Bun.sleep(200)
  sub.reset()
  const start = nowMs()
  let accepted = 0
  let lastAck = start
  const count = (n: number) => {
    accepted += n
    lastAck = nowMs()
  }
  if ('rate' in load) {
    // 50 ticks a second, each sending rate/50 events without waiting for earlier ones.
    const perTick = Math.max(1, Math.round(load.rate / 50))
    const ticks = Math.round(load.seconds * 50)
    const t0 = performance.now()
    const pending: Promise<void>[] = []
    for (let i = 0; i < ticks; i++) {
      const d = t0 + i * 20 - performance.now()
      if (d > 0) await Bun.sleep(d)
      pending.push(send(perTick).then(count))
    }
    await Promise.all(pending)
  } else {
    let sent = 0
    await Promise.all(
      Array.from({ length: load.concurrency }, async () => {
        while (sent < load.total) {
          const n = Math.min(load.batch, load.total - sent)
          sent += n
          count(await send(n))
        }
      }),
    )
  }
  const target = before.rows + accepted
  const deadline = Date.now() + 30_000
  while ((await rows()) < target && Date.now() < deadline) await Bun.sleep(10)
  const lagMs = nowMs() - lastAck
  // What the next phase waits for: every event accepted so far in Postgres.
  before.rows = target
  await sub.wait(() => accepted)
  const latency = summarize(sub.latencies)
  return {
    resyncs: sub.resyncs,
    accepted,
    acceptedPerSec: accepted / ((lastAck - start) / 1000),
    latency,
    latencies: sub.latencies,
    lagMs,
    sustainedPerSec: latency.count / ((sub.last - start) / 1000),
  }
}

let runId = 0
const nextRun = () => `e${Date.now().toString(36)}${runId++}`

export function restSender(api: { url: string }, token: string): Send {
  return async (n) => {
    const run = nextRun()
    const events = Array.from({ length: n }, (_, i) => scoreEvent(run, i))
    const res = await fetch(`${api.url}/v1/events`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      body: JSON.stringify({ events }),
    })
    await res.arrayBuffer()
    return res.status === 202 ? n : 0
  }
}

/** A send that fails (timeout, refused) counts as not accepted instead of stopping the run. */
export const counted = (send: Send): Send => (n) => send(n).catch(() => 0)

/**
 * Publishes over a few WebSockets, one event per frame; resolves with the events acknowledged.
 * The frames of one call leave in one write per socket (see FrameSocket), and one timer covers the
 * call: the load client's own cost per event (a syscall per frame, a 30 s timer per event) once
 * made this process, which also timestamps the subscriber's updates, the limit of the WS figures.
 * `onAck` is told when each event's ack arrived (bench/e2e-probe.ts).
 */
export async function wsSender(port: number, token: string, sockets = 4, onAck?: (ref: string, at: number) => void): Promise<{ send: Send; close: () => void }> {
  const waiting = new Map<string, (ok: boolean) => void>()
  const onText = (text: string) => {
    const f = JSON.parse(text)
    if (onAck && f.op === 'ack') onAck(f.ref, nowMs())
    waiting.get(f.ref)?.(f.op === 'ack')
    waiting.delete(f.ref)
  }
  const conns = await Promise.all(Array.from({ length: sockets }, () => openFrameSocket('127.0.0.1', port, `/v1/ws?token=${token}`, onText)))
  let k = 0
  return {
    send: async (n) => {
      const run = nextRun()
      const frames: string[][] = conns.map(() => [])
      const refs: string[] = []
      const acks = Array.from({ length: n }, (_, i) => {
        const ref = `${run}-${i}`
        refs.push(ref)
        frames[k++ % conns.length].push(JSON.stringify({ op: 'publish', ref, event: scoreEvent(run, i) }))
        return new Promise<boolean>((ok) => waiting.set(ref, ok))
      })
      conns.forEach((c, i) => frames[i].length > 0 && c.sendAll(frames[i]))
      // An ack that never comes counts as refused, so an overloaded node cannot hang the run.
      const timer = setTimeout(() => refs.forEach((ref) => (waiting.get(ref)?.(false), waiting.delete(ref))), 30_000)
      const ok = (await Promise.all(acks)).filter(Boolean).length
      clearTimeout(timer)
      return ok
    },
    close: () => conns.forEach((c) => c.close()),
  }
}

export function rawSender(d: Deployment): Send {
  const { FANFARE_SUBJECT_PREFIX: prefix, FANFARE_PARTITIONS: partitions } = d.env.config
  return async (n) => {
    const run = nextRun()
    const acks = await Promise.all(
      Array.from({ length: n }, (_, i) => {
        const m = storedScore(prefix, partitions, run, i)
        return d.js.publish(m.subject, m.body, { msgID: m.id, timeout: 30_000 }).then(
          () => 1,
          () => 0,
        )
      }),
    )
    return acks.reduce((a: number, b: number) => a + b, 0)
  }
}

export async function e2e(ctx: BenchContext): Promise<Figure[]> {
  const rates = pick(ctx, [200, 1000], [1000, 5000, 20_000])
  // 5 s per phase: a p99 from 3 s (150 samples past it at 5,000/s) moved by 1.5x between runs.
  const seconds = pick(ctx, 1, 5)
  const max = pick(ctx, { concurrency: 4, batch: 100, total: 1000 }, { concurrency: 8, batch: 250, total: 60_000 })
  const rig = await openRig()
  const { fan, bare, api, fanSub, bareSub, fanRows, bareRows } = rig
  const figures: Figure[] = []
  try {
    const token = fan.env.vars.FANFARE_INGEST_TOKEN
    const rest = counted(restSender(api, token))
    const ws = await wsSender(api.port, token)
    const raw = rawSender(bare)
    const fanBefore = { rows: 0 }
    const bareBefore = { rows: 0 }
    const row = (name: string, unit: string, value: number, baseline: number, target?: Figure['target']): Figure => ({
      group: 'end-to-end', name, unit, value, baselineName: 'bare pipeline', baseline, ...(target ? { target } : {}),
    })
    const senders = { bare: { send: raw, sub: bareSub, rows: bareRows, before: bareBefore }, REST: { send: rest, sub: fanSub, rows: fanRows, before: fanBefore }, WS: { send: counted(ws.send), sub: fanSub, rows: fanRows, before: fanBefore } }
    type Path = keyof typeof senders
    const paths = Object.keys(senders) as Path[]
    // Unrecorded first phase on every path: JIT, connection pools and consumers warm up before the
    // first measured phase, which otherwise paid for them alone (REST ran first: p99 3x WS's).
    ctx.log(`end-to-end: warm-up, ${rates[0]} events/s for 1 s on each path (not recorded)`)
    for (const { send, sub, rows, before } of Object.values(senders)) await phase(send, sub, rows, { rate: rates[0], seconds: 1 }, before)
    // At each rate the three paths take turns, `runs` phases each, the order reversed every other
    // time (bare REST WS, WS REST bare, ...); latencies are pooled over a path's phases (a p99 of
    // 3 x 5 s). One 5 s phase each moved the bare pipeline's p99 at 1,000/s from 6.9 to 39 ms
    // between runs (bench/findings.md): a single phase measured the machine more than the paths.
    const runs = pick(ctx, 1, 3)
    for (const rate of rates) {
      ctx.log(`end-to-end: ${rate} events/s offered for ${seconds} s, ${runs} phases per path`)
      const got: Record<Path, PhaseResult[]> = { bare: [], REST: [], WS: [] }
      for (let i = 0; i < runs; i++) {
        for (const name of i % 2 === 0 ? paths : [...paths].reverse()) {
          const { send, sub, rows, before } = senders[name]
          const x = await phase(send, sub, rows, { rate, seconds }, before)
          got[name].push(x)
          ctx.log(`  ${name}: ${Math.round(x.acceptedPerSec)} accepted/s, p50 ${x.latency.p50.toFixed(1)} p99 ${x.latency.p99.toFixed(1)} max ${x.latency.max.toFixed(1)} ms, lag ${x.lagMs.toFixed(0)} ms, ${x.latency.count}/${x.accepted} delivered, ${x.resyncs} resyncs`)
          if (x.latency.count < x.accepted) {
            ctx.notes.push(`end-to-end ${name} at ${rate}/s: ${x.accepted - x.latency.count} of ${x.accepted} updates not seen as updates by the subscriber (${x.resyncs} resync snapshots received instead)`)
          }
        }
      }
      const pooled = (name: Path) => ({
        acceptedPerSec: median(got[name].map((x) => x.acceptedPerSec)),
        latency: summarize(got[name].flatMap((x) => x.latencies)),
        lagMs: median(got[name].map((x) => x.lagMs)),
      })
      const [b, r, w] = [pooled('bare'), pooled('REST'), pooled('WS')]
      if (runs > 1) {
        const p99s = (name: Path) => got[name].map((x) => x.latency.p99.toFixed(1)).join(', ')
        ctx.notes.push(`end-to-end p99 per phase at ${rate}/s (ms, pooled in the figures): bare ${p99s('bare')}; REST ${p99s('REST')}; WS ${p99s('WS')}`)
      }
      figures.push(
        row(`REST accepted events/s at ${rate}/s offered`, '/s', r.acceptedPerSec, b.acceptedPerSec),
        row(`REST event-to-subscriber p50 at ${rate}/s`, 'ms', r.latency.p50, b.latency.p50),
        row(`REST event-to-subscriber p99 at ${rate}/s`, 'ms', r.latency.p99, b.latency.p99, { op: '<=', ratio: 2 }),
        row(`REST event-to-subscriber max at ${rate}/s`, 'ms', r.latency.max, b.latency.max),
        row(`REST projection lag after last ack at ${rate}/s`, 'ms', r.lagMs, b.lagMs),
        row(`WS accepted events/s at ${rate}/s offered`, '/s', w.acceptedPerSec, b.acceptedPerSec),
        row(`WS event-to-subscriber p99 at ${rate}/s`, 'ms', w.latency.p99, b.latency.p99, { op: '<=', ratio: 2 }),
      )
    }
    ctx.log(`end-to-end: maximum, ${max.total} events, ${max.concurrency} senders x ${max.batch}`)
    const b = await phase(raw, bareSub, bareRows, max, bareBefore)
    const r = await phase(rest, fanSub, fanRows, max, fanBefore)
    for (const [name, x] of [['bare', b], ['REST', r]] as const) {
      ctx.log(`  ${name}: ${Math.round(x.acceptedPerSec)} accepted/s, ${Math.round(x.sustainedPerSec)} delivered/s, p99 ${x.latency.p99.toFixed(1)} ms, lag ${x.lagMs.toFixed(0)} ms`)
    }
    figures.push(
      row('max accepted events/s (REST)', '/s', r.acceptedPerSec, b.acceptedPerSec),
      row('max sustained events/s (sent to delivered)', '/s', r.sustainedPerSec, b.sustainedPerSec, { op: '>=', ratio: 0.5 }),
      row('event-to-subscriber p99 at max', 'ms', r.latency.p99, b.latency.p99),
    )
    ws.close()
    fanSub.close()
    bareSub.close()
  } finally {
    await rig.close()
  }
  return figures
}

/**
 * Both sides of the end-to-end comparison, ready: a Fanfare deployment (API node, one worker
 * holding its partitions) and the bare pipeline, each with a subscriber of every board and a count
 * of its read model's rows. Also used by bench/e2e-probe.ts.
 */
export async function openRig() {
  const fan = await deploy()
  const bare = await deploy()
  const pipeline = startChild([BUN, 'bench/servers/bare-pipeline.ts'], {
    port: freePort(),
    natsUrl: bare.env.vars.NATS_URL,
    stream: bare.env.config.FANFARE_STREAM,
    pgUrl: bare.env.vars.DATABASE_URL,
  })
  const fanSql = postgres(fan.env.vars.DATABASE_URL, { max: 1, onnotice: () => {} })
  const bareSql = postgres(bare.env.vars.DATABASE_URL, { max: 1, onnotice: () => {} })
  const close = async () => {
    await Promise.all([fanSql.end(), bareSql.end()])
    await pipeline.stop()
    await fan.close()
    await bare.close()
  }
  try {
    const api = await fan.startApi()
    fan.startWorker()
    await waitForWorkers(fan, 1)
    const barePort = (await pipeline.next(30_000)).port
    return {
      fan,
      bare,
      api,
      fanSub: await Subscriber.open(`ws://127.0.0.1:${api.port}/v1/ws`, BOARDS),
      bareSub: await Subscriber.open(`ws://127.0.0.1:${barePort}/`, BOARDS),
      fanRows: async () => Number((await fanSql`select count(*)::int as n from leaderboard_entries`)[0].n),
      bareRows: async () => Number((await bareSql`select count(*)::int as n from bare_scores`)[0].n),
      close,
    }
  } catch (err) {
    await close()
    throw err
  }
}
