/**
 * Probe (not part of `bench/run.ts`): how the real pipeline forms change runs when a worker is
 * saturated. One worker on a fresh deployment; score events over `boards` leaderboards (one change
 * each: every event is a new player) published straight to the event stream as fast as JetStream
 * takes them (1,000 in flight) or at `--rate` per second; a plain subscription of this process to
 * the change subjects counts the runs and the changes in each. Prints, for the window in which
 * the worker published: runs/s, changes/s, changes per run (mean, p50, p90) and the per-second
 * timeline.
 *
 *   flock /tmp/bench.lock node_modules/.bin/bun bench/worker-runs-probe.ts [--events=60000] [--boards=100] [--rate=0] [--workers=1]
 */
import { runsOfData } from '../core/live-batches'
import { readFileSync } from 'node:fs'
import { dedupIdOf, keyOf, partitionOf, subjects } from '../core/events'
import type { ChangeRun } from '../core/channels'
import { scoreEvent } from './lib/events'
import { deploy, waitForWorkers } from './lib/fanfare'
import { nowMs } from './lib/stats'

const arg = (name: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1]
const EVENTS = Number(arg('events') ?? 60_000)
const BOARDS = Number(arg('boards') ?? 100)
const RATE = Number(arg('rate') ?? 0)
const WORKERS = Number(arg('workers') ?? 1)

const d = await deploy()
// A probe stopped by `timeout` must not leave its worker running (it would load later measurements).
for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => void d.close().finally(() => process.exit(1)))
try {
  for (let i = 0; i < WORKERS; i++) d.startWorker()
  await waitForWorkers(d, WORKERS)
  const { FANFARE_SUBJECT_PREFIX: prefix, FANFARE_PARTITIONS: partitions } = d.env.config
  const runs: { t: number; changes: number }[] = []
  d.nc.subscribe(subjects.changesOfKind(prefix, 'leaderboard'), {
    // One entry per run: one per message, or several in a live batch.
    callback: (_e, m) => {
      const t = nowMs()
      for (const run of runsOfData(m.data)) runs.push({ t, changes: run.changes.length })
    },
  })
  // Warm the worker (its first batches compile and open connections), then measure.
  const warm = 2000
  const publish = async (from: number, to: number, rate: number) => {
    const t0 = performance.now()
    let pending: Promise<unknown>[] = []
    for (let i = from; i < to; i++) {
      if (rate > 0 && i % 100 === 0) {
        const due = t0 + ((i - from) * 1000) / rate
        if (due > performance.now()) await Bun.sleep(due - performance.now())
      }
      const e = { ...scoreEvent('w', i, BOARDS), by: 'ingest' }
      const subject = subjects.event(prefix, partitionOf(keyOf(e), partitions), e.type)
      pending.push(d.js.publish(subject, JSON.stringify({ ...e, v: 1, at: new Date().toISOString() }), { msgID: dedupIdOf(e) }))
      if (pending.length >= 1000) await Promise.all(pending.splice(0))
    }
    await Promise.all(pending)
    return performance.now() - t0
  }
  await publish(0, warm, 0)
  const seen = () => runs.reduce((s, r) => s + r.changes, 0)
  for (const t0 = Date.now(); seen() < warm; ) {
    if (Date.now() - t0 > 60_000) throw new Error(`warm-up: ${seen()} of ${warm} changes after 60 s`)
    await Bun.sleep(20)
  }
  runs.length = 0
  const start = nowMs()
  const pubMs = await publish(warm, warm + EVENTS, RATE)
  for (let last = -1, quiet = 0; seen() < EVENTS && quiet < 50; ) {
    await Bun.sleep(100)
    const s = seen()
    quiet = s === last ? quiet + 1 : 0
    last = s
  }
  const end = runs.at(-1)!.t
  const sizes = runs.map((r) => r.changes).sort((a, b) => a - b)
  const q = (p: number) => sizes[Math.min(sizes.length - 1, Math.floor(p * sizes.length))]
  const secs = (end - start) / 1000
  console.log(`${EVENTS} events over ${BOARDS} boards, ${WORKERS} worker(s), ${RATE > 0 ? `offered ${RATE}/s` : 'published as fast as JetStream takes them'} (in ${pubMs.toFixed(0)} ms); load ${readFileSync('/proc/loadavg', 'utf8').trim()}`)
  console.log(`changes ${seen()} in ${runs.length} runs over ${secs.toFixed(1)} s: ${Math.round(seen() / secs)} changes/s, ${Math.round(runs.length / secs)} runs/s, changes per run mean ${(seen() / runs.length).toFixed(1)}, p10 ${q(0.1)}, p50 ${q(0.5)}, p90 ${q(0.9)}, max ${sizes.at(-1)}`)
  const bySecond = new Map<number, { runs: number; changes: number }>()
  for (const r of runs) {
    const s = Math.floor((r.t - start) / 1000)
    const b = bySecond.get(s) ?? bySecond.set(s, { runs: 0, changes: 0 }).get(s)!
    b.runs++
    b.changes += r.changes
  }
  console.log([...bySecond].map(([s, b]) => `${s}s: ${b.runs} runs / ${b.changes} changes`).join('; '))
} finally {
  await d.close()
}
