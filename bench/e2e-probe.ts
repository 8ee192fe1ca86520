/**
 * `bun bench/e2e-probe.ts [rate] [rounds] [seconds]`: the fixed-rate half of bench/e2e.ts at one
 * rate, the bare pipeline and Fanfare over REST taking turns, and where a Fanfare event's time goes.
 * For every update the subscriber receives, the probe joins: the send time (in the event), the REST
 * answer's arrival (the event is stored), the batch's commit time and its oldest event's stored time
 * (`at` and `stored` of the change run), the run's arrival at a plain subscription of this process
 * to the change subjects (the run is published), and the update's arrival at the subscriber.
 * All clocks are this machine's. Prints p50 / p90 / p99 of each hop per round.
 */
import { subjects } from '../core/events'
import type { ChangeRun } from '../core/channels'
import { BOARDS, scoreEvent } from './lib/events'
import { nowMs, quantile } from './lib/stats'
import { counted, openRig, phase } from './e2e'

const [rate, rounds, seconds] = [Number(process.argv[2] ?? 1000), Number(process.argv[3] ?? 3), Number(process.argv[4] ?? 5)]
const rig = await openRig()
const { fan, bare, api, fanSub, bareSub, fanRows, bareRows } = rig
try {
  // Stage times by player (one event per player).
  const acked = new Map<string, number>()
  const runs = new Map<string, { at: number; stored: number; published: number }>()
  const received: { player: string; sent: number; got: number; channel: string; version: number }[] = []
  const prefix = fan.env.config.FANFARE_SUBJECT_PREFIX
  fan.nc.subscribe(subjects.changesOfKind(prefix, 'leaderboard'), {
    callback: (_e, m) => {
      const t = nowMs()
      const run = m.json<ChangeRun>()
      const at = Date.parse(run.at)
      const stored = run.stored ? Date.parse(run.stored) : Number.NaN
      run.changes.forEach((_c, i) => runs.set(`${run.channel}/${run.version + i}`, { at, stored, published: t }))
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
  const { js } = bare
  const { FANFARE_SUBJECT_PREFIX: bp, FANFARE_PARTITIONS: parts } = bare.env.config
  const { storedScore } = await import('./lib/events')
  let rawId = 0
  const raw = async (n: number) => {
    const run = `r${Date.now().toString(36)}${rawId++}`
    const acks = await Promise.all(Array.from({ length: n }, (_, i) => {
      const m = storedScore(bp, parts, run, i)
      return js.publish(m.subject, m.body, { msgID: m.id, timeout: 30_000 }).then(() => 1, () => 0)
    }))
    return acks.reduce((a: number, b: number) => a + b, 0)
  }
  const fanBefore = { rows: 0 }
  const bareBefore = { rows: 0 }
  const fmt = (xs: number[]) => `${quantile(xs, 0.5).toFixed(1)} / ${quantile(xs, 0.9).toFixed(1)} / ${quantile(xs, 0.99).toFixed(1)}`
  await phase(raw, bareSub, bareRows, { rate, seconds: 1 }, bareBefore)
  await phase(rest, fanSub, fanRows, { rate, seconds: 1 }, fanBefore)
  for (let r = 0; r < rounds; r++) {
    const order = r % 2 ? (['rest', 'bare'] as const) : (['bare', 'rest'] as const)
    for (const side of order) {
      received.length = 0
      const x = side === 'bare' ? await phase(raw, bareSub, bareRows, { rate, seconds }, bareBefore) : await phase(rest, fanSub, fanRows, { rate, seconds }, fanBefore)
      const load = (await Bun.file('/proc/loadavg').text()).trim()
      console.log(`round ${r + 1} ${side}: p50 / p99 ${x.latency.p50.toFixed(1)} / ${x.latency.p99.toFixed(1)} ms, max ${x.latency.max.toFixed(1)}, ${x.latency.count}/${x.accepted}; load ${load}`)
      if (side === 'rest') {
        const hops = { ack: [] as number[], ackToStored: [] as number[], storedToCommit: [] as number[], sendToCommit: [] as number[], commitToPublished: [] as number[], publishedToSubscriber: [] as number[], total: [] as number[] }
        for (const e of received) {
          const run = runs.get(`${e.channel}/${e.version}`)
          const a = acked.get(e.player)
          if (!run || a === undefined) continue
          hops.ack.push(a - e.sent)
          hops.storedToCommit.push(run.at - run.stored)
          hops.sendToCommit.push(run.at - e.sent)
          hops.commitToPublished.push(run.published - run.at)
          hops.publishedToSubscriber.push(e.got - run.published)
          hops.total.push(e.got - e.sent)
        }
        console.log(`  hops p50 / p90 / p99 (ms, ${hops.total.length} events): send->REST answer ${fmt(hops.ack)}; send->commit ${fmt(hops.sendToCommit)} (batch's oldest stored->commit ${fmt(hops.storedToCommit)}); commit->run published ${fmt(hops.commitToPublished)}; published->subscriber ${fmt(hops.publishedToSubscriber)}; total ${fmt(hops.total)}`)
        // The tail itself, hop by hop: for the events at or past the total's p99, the median of each
        // hop (a hop's own p99 may come from other events than the total's).
        const cut = quantile(hops.total, 0.99)
        const tail = hops.total.flatMap((t, i) => (t >= cut ? [i] : []))
        const med = (xs: number[]) => quantile(tail.map((i) => xs[i]), 0.5).toFixed(1)
        console.log(`  tail (${tail.length} events, total >= ${cut.toFixed(1)} ms), medians: send->REST answer ${med(hops.ack)}; send->commit ${med(hops.sendToCommit)} (oldest stored->commit ${med(hops.storedToCommit)}); commit->run published ${med(hops.commitToPublished)}; published->subscriber ${med(hops.publishedToSubscriber)}`)
      }
    }
  }
  ws.close()
  fanSub.close()
  bareSub.close()
} finally {
  await rig.close()
}
