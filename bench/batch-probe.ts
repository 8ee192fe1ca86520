/**
 * `bun bench/batch-probe.ts [rounds] [seconds] [--compare=<checkout>]`: the worker's Postgres work
 * per batch, without NATS or the API. 8 partitions apply leaderboard score batches through
 * applyBatch at 1,000 events/s (20 events every 20 ms, as bench/e2e.ts sends them; boards b0-b7,
 * a new player per event), each partition one batch at a time (events of a tick that finds it busy
 * join its next batch, as in the runner). With --compare, another checkout (say `git archive
 * <commit>` unpacked, node_modules linked) applies the same load to a database of its own, taking
 * turns with this one. Prints per side and round: batch apply time and tick-to-commit per event
 * (p50 / p99), and the CPU of that side's Postgres backends and of this process during the phase.
 */
import { sql } from 'drizzle-orm'
import { createTestEnv } from '../core/testing/env'
import { connectBunSql, rowsOf } from '../core/db/client'
import { keyOf, partitionOf, subjects } from '../core/events'
import * as thisApply from '../stream-workers/src/projections/leaderboards/apply'
import * as thisBatch from '../stream-workers/src/runtime/batch'
import { quantile } from './lib/stats'

const args = process.argv.slice(2).filter((a) => !a.startsWith('--'))
const compare = process.argv.find((a) => a.startsWith('--compare='))?.slice(10)
const P = 8
const rounds = Number(args[0] ?? 3)
const seconds = Number(args[1] ?? 5)
const fmt = (xs: number[]) => `${quantile(xs, 0.5).toFixed(1)} / ${quantile(xs, 0.99).toFixed(1)}`

async function side(name: string, applyMod: typeof thisApply, batchMod: typeof thisBatch) {
  const env = await createTestEnv({ FANFARE_PARTITIONS: String(P) })
  const database = await connectBunSql(env.vars.DATABASE_URL)
  const db = database.db
  const prefix = env.config.FANFARE_SUBJECT_PREFIX
  const parts = await Promise.all(Array.from({ length: P }, async (_, p) => ({ p, token: await batchMod.claimFence(db, 'leaderboards', p), checkpoint: 0, seq: 0, queue: [] as { body: Uint8Array; sent: number }[], busy: false })))
  const dbName = new URL(env.vars.DATABASE_URL).pathname.slice(1)
  // CPU (ms) of this database's Postgres backends, from /proc: the server's work, less noisy than latency.
  const backendCpu = async () => {
    const rows = await rowsOf<{ pid: number }>(db, sql`select pid from pg_stat_activity where datname = ${dbName}`)
    let ticks = 0
    for (const r of rows) {
      try {
        const f = (await Bun.file(`/proc/${r.pid}/stat`).text()).split(') ')[1].split(' ')
        ticks += Number(f[11]) + Number(f[12])
      } catch {
        // A backend that ended meanwhile.
      }
    }
    return ticks * 10
  }
  let runId = 0
  const phase = async () => {
    const cpu0 = await backendCpu()
    const own0 = process.cpuUsage()
    const batchMs: number[] = []
    const eventMs: number[] = []
    const kick = (part: (typeof parts)[number]) => {
      if (part.busy || part.queue.length === 0) return
      part.busy = true
      const items = part.queue.splice(0, 500)
      const messages = items.map((it) => ({ subject: subjects.event(prefix, part.p, 'score.submitted'), seq: ++part.seq, body: it.body, storedAt: new Date() }))
      const owner = { projection: applyMod.leaderboardsProjection, partition: part.p, token: part.token, partitions: P, stream: '' }
      const t0 = performance.now()
      void batchMod.applyBatch(db, owner, part.checkpoint, messages, new Date()).then((r) => {
        const t1 = performance.now()
        part.checkpoint = r.checkpoint
        batchMs.push(t1 - t0)
        for (const it of items) eventMs.push(t1 - it.sent)
        part.busy = false
        kick(part)
      }, (err) => {
        console.error(name, err)
        process.exit(1)
      })
    }
    const t0 = performance.now()
    for (let i = 0; i < seconds * 50; i++) {
      const d = t0 + i * 20 - performance.now()
      if (d > 0) await Bun.sleep(d)
      const run = `r${runId++}`
      const sent = performance.now()
      for (let j = 0; j < 20; j++) {
        const e = { id: `${run}-${j}`, by: 'ingest', type: 'score.submitted' as const, v: 1, data: { board: `b${j % 8}`, player: `${run}-${j}`, score: sent }, at: new Date().toISOString() }
        const part = parts[partitionOf(keyOf(e), P)]
        part.queue.push({ body: new TextEncoder().encode(JSON.stringify(e)), sent })
        kick(part)
      }
    }
    while (parts.some((p) => p.busy || p.queue.length)) await Bun.sleep(5)
    const own = process.cpuUsage(own0)
    return { batchMs, eventMs, pgCpu: (await backendCpu()) - cpu0, ownCpu: (own.user + own.system) / 1000 }
  }
  return { name, phase, close: () => database.close() }
}

const sides = [await side('this', thisApply, thisBatch)]
if (compare) {
  const [applyMod, batchMod] = await Promise.all([import(`${compare}/stream-workers/src/projections/leaderboards/apply.ts`), import(`${compare}/stream-workers/src/runtime/batch.ts`)])
  sides.unshift(await side(compare, applyMod, batchMod))
}
for (const s of sides) await s.phase() // warm-up
for (let r = 0; r < rounds; r++) {
  for (const s of r % 2 ? [...sides].reverse() : sides) {
    const { batchMs, eventMs, pgCpu, ownCpu } = await s.phase()
    const load = (await Bun.file('/proc/loadavg').text()).split(' ').slice(0, 3).join(' ')
    console.log(`round ${r + 1} ${s.name}: batches ${batchMs.length}, batch apply p50 / p99 ${fmt(batchMs)} ms; tick->commit ${fmt(eventMs)} ms; Postgres CPU ${pgCpu} ms, client CPU ${ownCpu.toFixed(0)} ms; load ${load}`)
  }
}
for (const s of sides) await s.close()
process.exit(0)
