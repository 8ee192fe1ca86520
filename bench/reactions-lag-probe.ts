/**
 * `bun bench/reactions-lag-probe.ts [rounds] [--compare=<checkout>]`: where the live totals' lag of
 * the reactions benchmark goes. The benchmark's deployment and load (1 API node, 2 worker
 * processes, 2,000 users over WebSocket, 20 streams, 20,000 reactions/s for 10 s, window 1000 ms),
 * and for every acknowledged reaction, beside its ack time (load client) and the first frame that
 * includes it (observer in this process):
 * - stored: when JetStream stored the reaction.batched message holding it (its timestamp);
 * - pulled: the `at` of the first change run that includes it (the worker's clock when it began
 *   applying the batch: after its pull);
 * - run: when that run reached this process (a core NATS subscription on the change subjects; the
 *   API node's push consumer gets it about then);
 * - frame: the first frame with it at the observer.
 * Prints p50 / p90 / p99 of each step and of ack -> frame, per round, and the API node's CPU per
 * 1,000 acknowledged reactions (from /proc: waiting for a core does not count) in that phase and
 * in a maximum phase after it (2 reactions in flight per user for 6 s). With --compare, another
 * checkout (git archive unpacked, node_modules linked) runs the same rounds, taking turns (A B B A).
 */
import { readFileSync } from 'node:fs'
import { DeliverPolicy, jetstream } from '@nats-io/jetstream'
import { millis } from '@nats-io/transport-node'
import type { ChangeRun, ReactionsChange } from '../core/channels'
import { topology } from '../core/nats'
import { startChild } from './lib/child'
import { BUN } from './lib/context'
import { firstAtLeast, quantile, nowMs } from './lib/stats'

const EMOJIS = ['👏', '❤️', '🔥', '😂', '🎉', '👍🏽', '🇫🇷', '👩‍👩‍👧']
const STREAMS = Array.from({ length: 20 }, (_, i) => `live-${i}`)
const args = process.argv.slice(2).filter((a) => !a.startsWith('--'))
const compare = process.argv.find((a) => a.startsWith('--compare='))?.slice(10)
const rounds = Number(args[0] ?? 1)
const RATE = Number(process.argv.find((a) => a.startsWith('--rate='))?.slice(7) ?? 20_000)

/** CPU milliseconds (user + system) of a process so far. */
const cpuMsOf = (pid: number): number => {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')
  return (Number(f[11]) + Number(f[12])) * 10
}

type Point = { at: number; totals: Record<string, number>; pulled?: number }
type Acks = { stream: number[]; emoji: number[]; rank: number[]; at: number[]; seq: number[] }

/** Per ack: the time of the first point of its stream whose total for its emoji reaches its rank (NaN if none). */
function firstReaching(acks: Acks, points: (stream: string) => readonly Point[], pick: (p: Point) => number = (p) => p.at): number[] {
  const cache = new Map<string, { t: number[]; total: number[] }>()
  return acks.at.map((_, k) => {
    const key = `${acks.stream[k]}/${acks.emoji[k]}`
    let s = cache.get(key)
    if (!s) {
      s = { t: [], total: [] }
      for (const p of points(STREAMS[acks.stream[k]])) {
        const n = p.totals[EMOJIS[acks.emoji[k]]]
        if (n !== undefined) s.t.push(pick(p)), s.total.push(n)
      }
      cache.set(key, s)
    }
    const i = firstAtLeast(s.total, acks.rank[k])
    return i < s.t.length ? s.t[i] : Number.NaN
  })
}

async function round(root: string, label: string) {
  const { deploy, waitForWorkers } = await import(`${root}/bench/lib/fanfare.ts`)
  const { ReactionObserver } = await import(`./lib/reaction-observer.ts`)
  const d = await deploy({ FANFARE_REACTION_WINDOW_MS: '1000' })
  try {
    const api = await d.startApi()
    for (let i = 0; i < 2; i++) d.startWorker()
    await waitForWorkers(d, 2)
    const t = topology(d.env.config)
    // Runs as they reach this process, per stream.
    const runs = new Map<string, Point[]>()
    const sub = d.nc.subscribe(`${t.prefix}.changes.reactions.>`, {
      callback: (_e: unknown, m: { data: Uint8Array }) => {
        const at = nowMs()
        const run = JSON.parse(new TextDecoder().decode(m.data)) as ChangeRun
        const stream = run.channel.slice('reactions:'.length)
        const list = runs.get(stream) ?? []
        runs.set(stream, list)
        // A run's last change holds each of its emojis' latest total.
        const totals: Record<string, number> = {}
        for (const c of run.changes as ReactionsChange[]) Object.assign(totals, c.totals)
        list.push({ at, totals, pulled: Date.parse(run.at) })
      },
    })
    const observer = await ReactionObserver.open(`ws://127.0.0.1:${api.port}/v1/ws`, STREAMS)
    // This checkout's load client (it returns each ack's sequence).
    const clients = startChild([BUN, 'bench/clients/reaction-senders.ts'], { url: `ws://127.0.0.1:${api.port}/v1/ws`, users: 2000, streams: STREAMS, emojis: EMOJIS, jwtSecret: d.env.vars.FANFARE_JWT_SECRET })
    try {
      await clients.next(180_000)
      await clients.ask({ cmd: 'paced', rate: RATE / 4, seconds: 1 }, 120_000)
      await Bun.sleep(2000)
      const load0 = (await Bun.file('/proc/loadavg').text()).split(' ').slice(0, 3).join(' ')
      const cpu0 = cpuMsOf(api.proc.proc.pid)
      const paced = await clients.ask<{ started: number; lastAck: number; ackRate: number; acked: number; errors: Record<string, number> }>({ cmd: 'paced', rate: RATE, seconds: 10 }, 180_000)
      const pacedCpu = (cpuMsOf(api.proc.proc.pid) - cpu0) / (paced.acked / 1000)
      const load1 = (await Bun.file('/proc/loadavg').text()).split(' ').slice(0, 3).join(' ')
      await Bun.sleep(1500)
      const acks = await clients.ask<Acks>({ cmd: 'acks', from: paced.started, to: paced.lastAck }, 120_000)
      // Stored times of the event stream's messages the acks name.
      const stored = new Map<number, number>()
      const wanted = new Set(acks.seq)
      const consumer = await jetstream(d.nc).consumers.get(t.eventStream, { deliver_policy: DeliverPolicy.StartTime, opt_start_time: new Date(paced.started - 2000).toISOString() })
      const maxSeq = Math.max(...acks.seq)
      for await (const m of await consumer.fetch({ max_messages: 1_000_000, expires: 5_000 })) {
        if (wanted.has(m.seq)) stored.set(m.seq, millis(m.info.timestampNanos))
        if (m.seq >= maxSeq || m.info.pending === 0) break
      }
      const runAt = firstReaching(acks, (s) => runs.get(s) ?? [])
      const pulled = firstReaching(acks, (s) => runs.get(s) ?? [], (p) => p.pulled!)
      const frameAt = firstReaching(acks, (s) => observer.framesOf(s))
      const steps: Record<string, number[]> = { 'stored->ack': [], 'stored->pulled': [], 'pulled->run here': [], 'run here->frame': [], 'ack->run here': [], 'ack->frame': [] }
      for (let k = 0; k < acks.at.length; k++) {
        const s = stored.get(acks.seq[k])
        if (s === undefined || Number.isNaN(frameAt[k]) || Number.isNaN(runAt[k])) continue
        steps['stored->ack'].push(acks.at[k] - s)
        steps['stored->pulled'].push(pulled[k] - s)
        steps['pulled->run here'].push(runAt[k] - pulled[k])
        steps['run here->frame'].push(frameAt[k] - runAt[k])
        steps['ack->run here'].push(runAt[k] - acks.at[k])
        steps['ack->frame'].push(frameAt[k] - acks.at[k])
      }
      // Frame spacing per stream (the one-frame-per-window promise), and runs per stream per second.
      let closest = Infinity
      let frames = 0
      for (const s of STREAMS) {
        const fs = observer.framesOf(s).filter((f: { at: number }) => f.at >= paced.started && f.at <= paced.lastAck + 1500)
        frames += fs.length
        for (let i = 1; i < fs.length; i++) closest = Math.min(closest, fs[i].at - fs[i - 1].at)
      }
      const nRuns = [...runs.values()].reduce((n, l) => n + l.filter((p) => p.at >= paced.started && p.at <= paced.lastAck).length, 0)
      const cpu1 = cpuMsOf(api.proc.proc.pid)
      const max = await clients.ask<{ acked: number; ackRate: number }>({ cmd: 'max', inFlight: 2, seconds: 6 }, 180_000)
      const maxCpu = (cpuMsOf(api.proc.proc.pid) - cpu1) / (max.acked / 1000)
      const fmt = (xs: number[]) => `${quantile(xs, 0.5).toFixed(0)} / ${quantile(xs, 0.9).toFixed(0)} / ${quantile(xs, 0.99).toFixed(0)}`
      console.log(
        `${label}: ${Math.round(paced.ackRate)} acked/s ${JSON.stringify(paced.errors)}, load ${load0} -> ${load1}, ${acks.at.length} acks (${steps['ack->frame'].length} traced), ` +
          `${frames} frames (closest ${closest.toFixed(0)} ms), ${(nRuns / STREAMS.length / ((paced.lastAck - paced.started) / 1000)).toFixed(1)} runs/s per stream`,
      )
      console.log(`  API CPU per 1,000 acked: paced ${pacedCpu.toFixed(1)} ms; max phase ${Math.round(max.ackRate)} acked/s, ${maxCpu.toFixed(1)} ms`)
      for (const [name, xs] of Object.entries(steps)) console.log(`  ${name.padEnd(18)} p50 / p90 / p99 ${fmt(xs)} ms`)
      sub.unsubscribe()
      await clients.ask({ cmd: 'close' }).catch(() => {})
    } finally {
      observer.close()
      await clients.stop()
    }
  } finally {
    await d.close()
  }
}

const here = `${import.meta.dir}/..`
for (let r = 0; r < rounds; r++) {
  const order = compare ? (r % 2 === 0 ? [here, compare] : [compare, here]) : [here]
  for (const root of order) await round(root, `${root === here ? 'this' : 'compare'} #${r + 1}`)
}
process.exit(0)
