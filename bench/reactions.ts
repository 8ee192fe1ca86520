/**
 * (7) Reactions through the whole path: 2,000 users, each with a user JWT, on WebSocket, react to
 * 20 streams and watch their stream's `reactions:<stream>` channel. Each reaction is validated by
 * the API node, stored in JetStream (the ack; API nodes store a stream's reactions in batches),
 * applied by 2 stream-worker processes into Postgres (totals per stream and emoji, each reaction
 * once) and reaches the viewers in the next window's frame.
 *
 * Phases, each on Fanfare and on the baseline with the same load-client process:
 * - paced: 20,000 reactions/s offered for 10 s (each user 10 a second). Measured: reactions
 *   acknowledged per second; the live totals' lag, from a reaction's ack to the first frame whose
 *   totals include it (p50, p99), and the most frames a subscriber got within one window, both at
 *   observers in this process (one connection per stream: the load client shares the cores with
 *   the servers and receives late by a varying amount); for Fanfare, how long after the last ack
 *   the read model held every acknowledged reaction. The load client's own 2,000 subscriptions are
 *   checked for gaps.
 * - max: every user keeps 2 reactions unanswered for 8 s. Measured: reactions acknowledged AND
 *   applied per second in the steady state (the lower of the two rates: acks the workers cannot
 *   keep up with are not sustained).
 * Baseline: a bare Bun WebSocket server counting in memory with the same frames and window
 * (bench/servers/bare-reactions.ts): no durability, so what the durable path costs shows as the
 * ratio. For the frames figure the baseline is the change runs the workers wrote for a channel
 * (what one frame per change would send).
 */
import { DeliverPolicy, jetstream } from '@nats-io/jetstream'
import { millis } from '@nats-io/transport-node'
import postgres from 'postgres'
import { topology } from '../core/nats'
import { freePort } from '../core/process'
import { startChild, type Child } from './lib/child'
import { BUN, pick, type BenchContext } from './lib/context'
import { deploy, waitForWorkers, type Deployment } from './lib/fanfare'
import type { Figure } from './lib/report'
import { nowMs } from './lib/stats'
import type { SendersConfig } from './clients/reaction-senders'
import { ReactionObserver } from './lib/reaction-observer'

const EMOJIS = ['👏', '❤️', '🔥', '😂', '🎉', '👍🏽', '🇫🇷', '👩‍👩‍👧']

type PhaseResult = { sent: number; acked: number; unanswered: number; started: number; lastAck: number; ackRate: number; errors: Record<string, number> }
type MaxResult = PhaseResult & { timeline: [number, number][] }
type Lag = { count: number; p50: number; p99: number; max: number; missing: number }
type Frames = { frames: number; subscribers: number; closest: number; mostInWindow: number; gaps: number; seconds: number }
type Acks = { stream: number[]; emoji: number[]; rank: number[]; at: number[] }
type Run = { paced: PhaseResult; lag: Lag; frames: ReturnType<ReactionObserver['frameStats']>; max: MaxResult; sustained: number; tailMs?: number; runsInWindow?: number }

/** The steady-state rate of a counter sampled as (time, count): from a quarter into the phase to its end. */
function steadyRate(samples: [number, number][], from: number, to: number): number {
  const inside = samples.filter(([t]) => t >= from && t <= to)
  if (inside.length < 2) return Number.NaN
  const [t0, n0] = inside[0]
  const [t1, n1] = inside[inside.length - 1]
  return (n1 - n0) / ((t1 - t0) / 1000)
}

async function runPhases(
  ctx: BenchContext,
  name: string,
  clients: Child,
  observer: ReactionObserver,
  streams: string[],
  sizes: { rate: number; seconds: number; maxSeconds: number; windowMs: number },
  applied?: () => Promise<number>,
): Promise<Run> {
  // Until the read model holds `total` reactions; when it did (nowMs).
  const untilApplied = async (total: number) => {
    const deadline = nowMs() + 60_000
    while ((await applied!()) < total && nowMs() < deadline) await Bun.sleep(10)
    return nowMs()
  }
  // Unrecorded warm-up: JIT, pools and consumers.
  const warm = await clients.ask<PhaseResult>({ cmd: 'paced', rate: sizes.rate / 4, seconds: 1 }, 120_000)
  let total = warm.acked
  if (applied) await untilApplied(total)

  ctx.log(`  ${name}: ${sizes.rate} reactions/s offered for ${sizes.seconds} s`)
  const paced = await clients.ask<PhaseResult>({ cmd: 'paced', rate: sizes.rate, seconds: sizes.seconds }, 180_000)
  total += paced.acked
  const tail = applied ? (await untilApplied(total)) - paced.lastAck : undefined
  // The last window's frame follows the last apply by up to a window.
  await Bun.sleep(sizes.windowMs + 500)
  const acks = await clients.ask<Acks>({ cmd: 'acks', from: paced.started, to: paced.lastAck }, 120_000)
  const lag = observer.lag(acks, streams, EMOJIS)
  const until = paced.lastAck + sizes.windowMs + 500
  const frames = observer.frameStats(paced.started, until, sizes.windowMs)
  // What the load client's own 2,000 subscriptions saw (late by its own load; gaps matter here).
  const senderLag = await clients.ask<Lag>({ cmd: 'lag', from: paced.started, to: paced.lastAck }, 120_000)
  const viewers = await clients.ask<Frames>({ cmd: 'frames', from: paced.started, to: until, windowMs: sizes.windowMs }, 120_000)
  ctx.log(
    `    ${Math.round(paced.ackRate)} acked/s (${paced.acked}/${paced.sent}, ${paced.unanswered} unanswered), ` +
      `${tail === undefined ? '' : `all applied ${tail.toFixed(0)} ms after the last ack, `}` +
      `lag ack->frame p50 ${lag.p50.toFixed(0)} p99 ${lag.p99.toFixed(0)} max ${lag.max.toFixed(0)} ms (${lag.missing} never seen), ` +
      `observers: ${frames.frames} frames, closest ${frames.closest.toFixed(0)} ms apart, at most ${frames.mostInWindow} per window, ${frames.gaps} gaps; ` +
      `senders' own subscriptions: ${viewers.frames} frames to ${viewers.subscribers}, ${viewers.gaps} gaps, closest ${viewers.closest.toFixed(0)} ms apart, ` +
      `lag p99 ${senderLag.p99.toFixed(0)} ms; errors ${JSON.stringify(paced.errors)}`,
  )

  ctx.log(`  ${name}: maximum, 2 reactions in flight per user for ${sizes.maxSeconds} s`)
  const samples: [number, number][] = []
  let sampling = applied !== undefined
  const sampler = (async () => {
    while (sampling) {
      samples.push([nowMs(), await applied!()])
      await Bun.sleep(100)
    }
  })()
  const max = await clients.ask<MaxResult>({ cmd: 'max', inFlight: 2, seconds: sizes.maxSeconds }, 180_000)
  total += max.acked
  if (applied) await untilApplied(total)
  sampling = false
  await sampler
  const from = max.started + (sizes.maxSeconds * 1000) / 4
  const to = max.started + sizes.maxSeconds * 1000
  const ackRate = steadyRate(max.timeline, from, to)
  const applyRate = applied ? steadyRate(samples, from, to) : ackRate
  const sustained = Math.min(ackRate, applyRate)
  ctx.log(`    steady state: ${Math.round(ackRate)} acked/s, ${Math.round(applyRate)} applied/s; errors ${JSON.stringify(max.errors)}`)
  for (const [phase, r] of [['paced', paced], ['max', max]] as const) {
    const errors = Object.entries(r.errors).filter(([, n]) => n > 0)
    if (errors.length) ctx.notes.push(`reactions, ${name} ${phase}: ${errors.map(([code, n]) => `${n} ${code}`).join(', ')}`)
    if (r.unanswered) ctx.notes.push(`reactions, ${name} ${phase}: ${r.unanswered} reactions never answered`)
  }
  if (lag.missing) ctx.notes.push(`reactions, ${name}: ${lag.missing} acknowledged reactions never seen in a frame by the observers`)
  if (frames.gaps || viewers.gaps) ctx.notes.push(`reactions, ${name}: ${frames.gaps + viewers.gaps} frames did not continue the previous one`)
  if (senderLag.missing) ctx.notes.push(`reactions, ${name}: ${senderLag.missing} acknowledged reactions never seen in a frame by their sender`)
  return { paced, lag, frames, max, sustained, tailMs: tail }
}

/** The most change runs one reactions channel got within any `windowMs - 20` during [from, to] (by JetStream's stored times). */
async function runsPerWindow(d: Deployment, from: number, to: number, windowMs: number): Promise<number> {
  const stream = topology(d.env.config).changeStreams.reactions
  const consumer = await jetstream(d.nc).consumers.get(stream, { deliver_policy: DeliverPolicy.StartTime, opt_start_time: new Date(from).toISOString() })
  const times = new Map<string, number[]>()
  for await (const m of await consumer.fetch({ max_messages: 1_000_000, expires: 2_000 })) {
    const at = millis(m.info.timestampNanos)
    if (at > to) break
    const list = times.get(m.subject) ?? []
    list.push(at)
    times.set(m.subject, list)
    if (m.info.pending === 0) break
  }
  let most = 0
  for (const list of times.values()) {
    let lo = 0
    for (let k = 0; k < list.length; k++) {
      while (list[k] - list[lo] >= windowMs - 20) lo++
      most = Math.max(most, k - lo + 1)
    }
  }
  return most
}

export async function reactions(ctx: BenchContext): Promise<Figure[]> {
  const users = pick(ctx, 40, 2000)
  const rate = pick(ctx, 400, 20_000)
  const sizes = { rate, seconds: pick(ctx, 1, 10), maxSeconds: pick(ctx, 1, 8), windowMs: pick(ctx, 250, 1000) }
  const streams = Array.from({ length: pick(ctx, 4, 20) }, (_, i) => `live-${i}`)
  const workers = 2
  const cfg = (url: string, jwtSecret?: string): SendersConfig => ({ url, users, streams, emojis: EMOJIS, jwtSecret })

  ctx.log(`reactions: ${users} users on ${streams.length} streams, window ${sizes.windowMs} ms; baseline: bare Bun counting in memory`)
  const bareServer = startChild([BUN, 'bench/servers/bare-reactions.ts'], { port: freePort(), windowMs: sizes.windowMs })
  let bare: Run
  try {
    const port = (await bareServer.next(30_000)).port
    const observer = await ReactionObserver.open(`ws://127.0.0.1:${port}/`, streams)
    const clients = startChild([BUN, 'bench/clients/reaction-senders.ts'], cfg(`ws://127.0.0.1:${port}/`))
    try {
      await clients.next(180_000)
      bare = await runPhases(ctx, 'bare', clients, observer, streams, sizes)
      await clients.ask({ cmd: 'close' }).catch(() => {})
    } finally {
      observer.close()
      await clients.stop()
    }
  } finally {
    await bareServer.stop()
  }

  ctx.log(`reactions: Fanfare, 1 API node, ${workers} worker processes`)
  const d = await deploy({ FANFARE_REACTION_WINDOW_MS: String(sizes.windowMs) })
  const sql = postgres(d.env.vars.DATABASE_URL, { max: 1, onnotice: () => {} })
  let fan: Run
  try {
    const api = await d.startApi()
    for (let i = 0; i < workers; i++) d.startWorker()
    await waitForWorkers(d, workers)
    const observer = await ReactionObserver.open(`ws://127.0.0.1:${api.port}/v1/ws`, streams)
    const clients = startChild([BUN, 'bench/clients/reaction-senders.ts'], cfg(`ws://127.0.0.1:${api.port}/v1/ws`, d.env.vars.FANFARE_JWT_SECRET))
    try {
      const ready = await clients.next(180_000)
      ctx.log(`  ${users} users signed in and subscribed in ${ready.openMs.toFixed(0)} ms`)
      const applied = async () => Number((await sql`select coalesce(sum(count), 0)::bigint as n from reaction_totals`)[0].n)
      fan = await runPhases(ctx, 'Fanfare', clients, observer, streams, sizes, applied)
      fan.runsInWindow = await runsPerWindow(d, fan.paced.started, fan.paced.lastAck, sizes.windowMs)
      ctx.notes.push(`reactions at ${rate}/s offered: the read model held every acknowledged reaction ${fan.tailMs?.toFixed(0)} ms after the last ack`)
      ctx.log(`    without the window a subscriber would have got up to ${fan.runsInWindow} frames per window (change runs of one channel)`)
      await clients.ask({ cmd: 'close' }).catch(() => {})
    } finally {
      observer.close()
      await clients.stop()
    }
  } finally {
    await sql.end()
    await d.close()
  }

  const base = { group: 'reactions', baselineName: 'bare Bun counting in memory' }
  const w = sizes.windowMs
  return [
    {
      ...base,
      name: `reactions/s accepted and applied, ${users} users over WebSocket (max, steady state)`,
      unit: '/s',
      value: fan.sustained,
      baseline: bare.sustained,
      target: { op: '>=', value: 20_000 },
    },
    { ...base, name: `reactions/s acknowledged at ${rate}/s offered`, unit: '/s', value: fan.paced.ackRate, baseline: bare.paced.ackRate },
    { ...base, name: `live totals lag p50 at ${rate}/s (ack to first frame with it, window ${w} ms)`, unit: 'ms', value: fan.lag.p50, baseline: bare.lag.p50 },
    {
      ...base,
      name: `live totals lag p99 at ${rate}/s (ack to first frame with it, window ${w} ms)`,
      unit: 'ms',
      value: fan.lag.p99,
      baseline: bare.lag.p99,
      target: { op: '<=', value: w + 100 },
    },
    {
      ...base,
      name: `most frames one subscriber got within a window at ${rate}/s`,
      unit: 'frames',
      value: fan.frames.mostInWindow,
      baseline: fan.runsInWindow ?? Number.NaN,
      baselineName: 'one frame per change (change runs of a channel)',
      target: { op: '<=', value: 1 },
    },
  ]
}
