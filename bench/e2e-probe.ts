/**
 * `bun bench/e2e-probe.ts [rate] [rounds] [seconds] [sides]`: the fixed-rate half of bench/e2e.ts at
 * one rate, the bare pipeline and Fanfare over REST and/or WebSocket (`sides`, default `rest`; e.g.
 * `rest,ws`) taking turns, and where a Fanfare event's time goes.
 * For every update the subscriber receives, the probe joins: the send time (in the event), the REST
 * answer's or WebSocket ack's arrival (the event is stored), the event's arrival at a plain
 * subscription of this process to the event subjects (nats-server routed its publish: the ingest
 * hop without the answer), the batch's commit time and its oldest event's stored time
 * (`at` and `stored` of the change run), the run's arrival at a plain subscription of this process
 * to the change subjects (the run is published), and the update's arrival at the subscriber.
 * All clocks are this machine's. Prints p50 / p90 / p99 of each hop per round, how far apart the
 * events of one send reached nats-server, and over all rounds pooled each side's p50 to p99.9, with
 * (Fanfare) the events that reached nats-server more than 0.5 ms after their send's first apart.
 */
import { runsOfData } from '../core/live-batches'
import { subjects } from '../core/events'
import type { ChangeRun } from '../core/channels'
import { BOARDS, scoreEvent } from './lib/events'
import { nowMs, quantile } from './lib/stats'
import { jetstream } from '@nats-io/jetstream'
import { connect } from '@nats-io/transport-node'
import { counted, openRig, phase, wsSender } from './e2e'

const [rate, rounds, seconds] = [Number(process.argv[2] ?? 1000), Number(process.argv[3] ?? 3), Number(process.argv[4] ?? 5)]
// `ws`: bench/e2e.ts's WebSocket sender (4 sockets); `ws1`: the same over one socket; `bare4`: the
// bare pipeline's publishes spread over 4 NATS connections (a write each per send, as `ws`).
const paths = (process.argv[5] ?? 'rest').split(',') as ('rest' | 'ws' | 'ws1' | 'bare4')[]
const rig = await openRig()
const { fan, bare, api, fanSub, bareSub, fanRows, bareRows } = rig
try {
  // Stage times by player (one event per player).
  const acked = new Map<string, number>()
  const runs = new Map<string, { at: number; stored: number; published: number }>()
  const received: { player: string; sent: number; got: number; channel: string; version: number }[] = []
  const prefix = fan.env.config.FANFARE_SUBJECT_PREFIX
  // When each event reached nats-server (one event per player).
  const routed = new Map<string, number>()
  fan.nc.subscribe(subjects.allEvents(prefix), {
    callback: (_e, m) => {
      const t = nowMs()
      const e = m.json<{ data?: { player?: string } }>()
      if (e.data?.player) routed.set(e.data.player, t)
    },
  })
  fan.nc.subscribe(subjects.changesOfKind(prefix, 'leaderboard'), {
    callback: (_e, m) => {
      const t = nowMs()
      // One run per message, or a live batch of several.
      for (const run of runsOfData(m.data)) {
        const at = Date.parse(run.at)
        const stored = run.stored ? Date.parse(run.stored) : Number.NaN
        run.changes.forEach((_c, i) => runs.set(`${run.channel}/${run.version + i}`, { at, stored, published: t }))
      }
    },
  })
  const ws = new WebSocket(`ws://127.0.0.1:${api.port}/v1/ws`)
  await new Promise<void>((ok) => (ws.onopen = () => ok()))
  for (const c of BOARDS) ws.send(JSON.stringify({ op: 'subscribe', ref: c, channel: c }))
  ws.onmessage = (e) => {
    const t = nowMs()
    const f = JSON.parse(String(e.data))
    if (f.op === 'update') received.push({ player: f.data.player, sent: f.data.score, got: t, channel: f.channel, version: f.version })
  }
  const token = fan.env.vars.FANFARE_INGEST_TOKEN
  let runId = 0
  const rest = counted(async (n) => {
    const run = `p${Date.now().toString(36)}${runId++}`
    const events = Array.from({ length: n }, (_, i) => scoreEvent(run, i))
    const res = await fetch(`${api.url}/v1/events`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` }, body: JSON.stringify({ events }) })
    await res.arrayBuffer()
    const t = nowMs()
    for (const e of events) acked.set(e.data.player, t)
    return res.status === 202 ? n : 0
  })
  const fmt = (xs: number[]) => `${quantile(xs, 0.5).toFixed(1)} / ${quantile(xs, 0.9).toFixed(1)} / ${quantile(xs, 0.99).toFixed(1)}`
  const onAck = (ref: string, t: number) => void acked.set(ref, t)
  const wsSenders = { ws: await wsSender(api.port, token, 4, onAck), ws1: await wsSender(api.port, token, 1, onAck) }
  const isBare = (side: string) => side === 'bare' || side === 'bare4'
  const sendOf = (side: 'bare' | (typeof paths)[number]) =>
    side === 'bare' ? raw(() => js) : side === 'bare4' ? raw(() => js4[k4++ % js4.length]) : side === 'rest' ? rest : counted(wsSenders[side].send)
  const { js } = bare
  const conns4 = await Promise.all(Array.from({ length: 4 }, () => connect({ servers: bare.env.vars.NATS_URL })))
  const js4 = conns4.map((nc) => jetstream(nc))
  let k4 = 0
  // The bare side's events as they reached nats-server, by player.
  const routedBare = new Map<string, number>()
  bare.nc.subscribe(subjects.allEvents(bare.env.config.FANFARE_SUBJECT_PREFIX), {
    callback: (_e, m) => {
      const t = nowMs()
      const e = m.json<{ data?: { player?: string } }>()
      if (e.data?.player) routedBare.set(e.data.player, t)
    },
  })
  const { FANFARE_SUBJECT_PREFIX: bp, FANFARE_PARTITIONS: parts } = bare.env.config
  const { storedScore } = await import('./lib/events')
  let rawId = 0
  const raw = (client: () => typeof js) => async (n: number) => {
    const run = `r${Date.now().toString(36)}${rawId++}`
    const acks = await Promise.all(Array.from({ length: n }, (_, i) => {
      const m = storedScore(bp, parts, run, i)
      return client().publish(m.subject, m.body, { msgID: m.id, timeout: 30_000 }).then(() => 1, () => 0)
    }))
    return acks.reduce((a: number, b: number) => a + b, 0)
  }
  const fanBefore = { rows: 0 }
  const bareBefore = { rows: 0 }
  await phase(sendOf('bare'), bareSub, bareRows, { rate, seconds: 1 }, bareBefore)
  for (const path of paths) await phase(sendOf(path), isBare(path) ? bareSub : fanSub, isBare(path) ? bareRows : fanRows, { rate, seconds: 1 }, isBare(path) ? bareBefore : fanBefore)
  const sides = ['bare', ...paths] as const
  // Over all rounds, per side: every update's latency, and (Fanfare) how long after the first event
  // of its send the event reached nats-server.
  const pooled = new Map<string, { total: number[]; late: number[] }>(sides.map((s) => [s, { total: [], late: [] }]))
  for (let r = 0; r < rounds; r++) {
    // Each side in each place of the order over the rounds: rotated by one per round.
    const order = sides.map((_, i) => sides[(i + r) % sides.length])
    for (const side of order) {
      received.length = 0
      routedBare.clear()
      const cpu = process.cpuUsage()
      const x = isBare(side) ? await phase(sendOf(side), bareSub, bareRows, { rate, seconds }, bareBefore) : await phase(sendOf(side), fanSub, fanRows, { rate, seconds }, fanBefore)
      const used = process.cpuUsage(cpu)
      let bareSpread = ''
      if (isBare(side)) {
        pooled.get(side)!.total.push(...bareSub.latencies)
        const ticks = new Map<string, { min: number; max: number }>()
        for (const [player, n] of routedBare) {
          const tick = player.slice(0, player.lastIndexOf('-'))
          const s = ticks.get(tick)
          if (s) (s.min = Math.min(s.min, n)), (s.max = Math.max(s.max, n))
          else ticks.set(tick, { min: n, max: n })
        }
        bareSpread = `; one send's events routed within ${fmt([...ticks.values()].map((s) => s.max - s.min))} ms`
      }
      const load = (await Bun.file('/proc/loadavg').text()).trim()
      console.log(`round ${r + 1} ${side}: p50 / p99 ${x.latency.p50.toFixed(1)} / ${x.latency.p99.toFixed(1)} ms, max ${x.latency.max.toFixed(1)}, ${x.latency.count}/${x.accepted}; this process's CPU ${((used.user + used.system) / 1000).toFixed(0)} ms${bareSpread}; load ${load}`)
      if (!isBare(side)) {
        const hops = { ack: [] as number[], routed: [] as number[], routedToCommit: [] as number[], storedToCommit: [] as number[], sendToCommit: [] as number[], commitToPublished: [] as number[], publishedToSubscriber: [] as number[], total: [] as number[] }
        // How far apart the events of one send (one tick) reached nats-server.
        const spread = new Map<string, { min: number; max: number }>()
        for (const e of received) {
          const run = runs.get(`${e.channel}/${e.version}`)
          const a = acked.get(e.player)
          const n = routed.get(e.player)
          if (!run || a === undefined || n === undefined) continue
          const tick = e.player.slice(0, e.player.lastIndexOf('-'))
          const s = spread.get(tick)
          if (s) (s.min = Math.min(s.min, n)), (s.max = Math.max(s.max, n))
          else spread.set(tick, { min: n, max: n })
          hops.ack.push(a - e.sent)
          hops.routed.push(n - e.sent)
          hops.routedToCommit.push(run.at - n)
          hops.storedToCommit.push(run.at - run.stored)
          hops.sendToCommit.push(run.at - e.sent)
          hops.commitToPublished.push(run.published - run.at)
          hops.publishedToSubscriber.push(e.got - run.published)
          hops.total.push(e.got - e.sent)
        }
        const spreads = [...spread.values()].map((s) => s.max - s.min)
        const pool = pooled.get(side)!
        for (const e of received) {
          const n = routed.get(e.player)
          const s = spread.get(e.player.slice(0, e.player.lastIndexOf('-')))
          if (n === undefined || !s || !runs.has(`${e.channel}/${e.version}`) || !acked.has(e.player)) continue
          pool.total.push(e.got - e.sent)
          pool.late.push(n - s.min)
        }
        console.log(`  hops p50 / p90 / p99 (ms, ${hops.total.length} events): send->answer ${fmt(hops.ack)}; send->routed by NATS ${fmt(hops.routed)}; routed->commit ${fmt(hops.routedToCommit)}; one send's events routed within ${fmt(spreads)}; send->commit ${fmt(hops.sendToCommit)} (batch's oldest stored->commit ${fmt(hops.storedToCommit)}); commit->run published ${fmt(hops.commitToPublished)}; published->subscriber ${fmt(hops.publishedToSubscriber)}; total ${fmt(hops.total)}`)
        // The tail itself, hop by hop: for the events at or past the total's p99, the median of each
        // hop (a hop's own p99 may come from other events than the total's).
        const cut = quantile(hops.total, 0.99)
        const tail = hops.total.flatMap((t, i) => (t >= cut ? [i] : []))
        const med = (xs: number[]) => quantile(tail.map((i) => xs[i]), 0.5).toFixed(1)
        console.log(`  tail (${tail.length} events, total >= ${cut.toFixed(1)} ms), medians: send->answer ${med(hops.ack)}; send->routed ${med(hops.routed)}; routed->commit ${med(hops.routedToCommit)}; send->commit ${med(hops.sendToCommit)} (oldest stored->commit ${med(hops.storedToCommit)}); commit->run published ${med(hops.commitToPublished)}; published->subscriber ${med(hops.publishedToSubscriber)}`)
      }
    }
  }
  // The rounds pooled: a p99 of rounds x rate x seconds updates moves less than a round's.
  for (const [side, { total, late }] of pooled) {
    const q = (xs: number[], p: number) => quantile(xs, p).toFixed(1)
    let line = `pooled ${side}: ${total.length} updates, p50 / p90 / p99 / p99.9 ${q(total, 0.5)} / ${q(total, 0.9)} / ${q(total, 0.99)} / ${q(total, 0.999)} ms`
    if (late.length > 0) {
      const cut = quantile(total, 0.99)
      const isLate = (i: number) => late[i] > 0.5
      const all = late.filter((_, i) => isLate(i)).length / late.length
      const tail = total.flatMap((t, i) => (t >= cut ? [i] : []))
      const inTail = tail.filter(isLate).length / tail.length
      const of = (late: boolean) => total.filter((_, i) => isLate(i) === late)
      const qs = (xs: number[]) => `${q(xs, 0.5)} / ${q(xs, 0.9)} / ${q(xs, 0.99)}`
      line += `; reached NATS > 0.5 ms after its send's first event: ${(100 * all).toFixed(1)}% of updates, ${(100 * inTail).toFixed(1)}% of those >= p99; p50 / p90 / p99 of those ${qs(of(true))} ms, of the others ${qs(of(false))} ms`
    }
    console.log(line)
  }
  ws.close()
  for (const w of Object.values(wsSenders)) w.close()
  await Promise.all(conns4.map((nc) => nc.close()))
  fanSub.close()
  bareSub.close()
} finally {
  await rig.close()
}
