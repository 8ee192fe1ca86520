/**
 * `bun bench/batch-probe.ts [rounds] [seconds] [--compare=<checkout>]`: the worker's Postgres work
 * per batch, without NATS or the API. 8 partitions apply leaderboard score batches through
 * applyBatch at 1,000 events/s (20 events every 20 ms, as bench/e2e.ts sends them; boards b0-b7,
 * a new player per event), each partition one batch at a time (events of a tick that finds it busy
 * join its next batch, as in the runner). With --compare, another checkout (say `git archive
 * <commit>` unpacked, node_modules linked) applies the same load to a database of its own, taking
 * turns with this one. Prints per side and round: batch apply time and tick-to-commit per event
 * (p50 / p99), and the CPU of that side's Postgres backends and of this process during the phase.
 * A side whose checkout has a group committer (stream-workers/src/runtime/committer.ts) applies
 * through it, as its worker processes do, unless --alone. --waits, --disjoint, --sync-off: below.
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
// --waits: sample what this side's Postgres backends wait on (pg_stat_activity, every ~2 ms) during each phase.
const waits = process.argv.includes('--waits')
// --disjoint: each partition scores its own board (no channel shared between partitions): what the
// shared channel_versions rows cost, by difference.
const disjoint = process.argv.includes('--disjoint')
// --sync-off: the sides' databases commit without waiting for the WAL flush (synchronous_commit
// off): what the commits' flushes cost, by difference. Never so in production.
const syncOff = process.argv.includes('--sync-off')
// --in-flight=N: the committers' maxInFlight (their default when absent).
const inFlight = Number(process.argv.find((a) => a.startsWith('--in-flight='))?.slice(12) ?? 0)
const P = 8
const rounds = Number(args[0] ?? 3)
const seconds = Number(args[1] ?? 5)
const fmt = (xs: number[]) => `${quantile(xs, 0.5).toFixed(1)} / ${quantile(xs, 0.99).toFixed(1)}`

// A checkout's group committer (stream-workers/src/runtime/committer.ts), when it has one and --alone is not given.
const committerOf = async (root: string) => (process.argv.includes('--alone') ? undefined : await import(`${root}/stream-workers/src/runtime/committer.ts`).catch(() => undefined))

async function side(name: string, applyMod: typeof thisApply, batchMod: typeof thisBatch, committerMod?: typeof import('../stream-workers/src/runtime/committer')) {
  const env = await createTestEnv({ FANFARE_PARTITIONS: String(P) })
  if (syncOff) {
    const admin = await connectBunSql(env.vars.DATABASE_URL, { max: 1 })
    await admin.db.execute(sql.raw(`alter database "${new URL(env.vars.DATABASE_URL).pathname.slice(1)}" set synchronous_commit = off`))
    await admin.close()
  }
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
  // A failed group statement is logged: its batches then run alone, which the figures would hide.
  const logger = { warn: (o: unknown, m: string) => console.error(name, m, o) } as never
  // Statements the committer made: groups (and the batches in them); the rest of the batches ran alone.
  const statements = { groups: 0, grouped: 0 }
  const onGroup = (ps: number[]) => {
    statements.groups++
    statements.grouped += ps.length
  }
  const committer = committerMod?.createBatchCommitter({ db, logger, onGroup, ...(inFlight ? { maxInFlight: inFlight } : {}) })
  const apply: (...a: Parameters<typeof thisBatch.applyBatch>) => ReturnType<typeof thisBatch.applyBatch> = committer
    ? (_db, owner, expected, messages, now) => committer.apply(owner, expected, messages, now)
    : batchMod.applyBatch
  let runId = 0
  // Wait events of this database's backends, sampled from a connection of its own.
  const sampler = waits ? await connectBunSql(env.vars.DATABASE_URL, { max: 1 }) : undefined
  const sampleWaits = async (until: () => boolean) => {
    const counts = new Map<string, number>()
    let samples = 0
    while (sampler && !until()) {
      const rows = await rowsOf<{ w: string }>(
        sampler.db,
        sql`select coalesce(wait_event_type || ':' || wait_event, 'cpu') as w from pg_stat_activity where datname = ${dbName} and state = 'active' and pid <> pg_backend_pid()`,
      )
      samples++
      for (const r of rows) counts.set(r.w, (counts.get(r.w) ?? 0) + 1)
      await Bun.sleep(2)
    }
    return [...counts].sort((a, b) => b[1] - a[1]).map(([w, n]) => `${w} ${(n / samples).toFixed(2)}`).join(', ') + ` (${samples} samples, mean active backends by wait)`
  }
  const boardOf = (run: string, j: number) => {
    if (!disjoint) return { board: `b${j % 8}`, player: `${run}-${j}` }
    // A player and a board b<m> whose key lands in partition m: that board is that partition's
    // alone, and partitions are hit at random as in the shared case.
    for (let k = 0; ; k++) {
      const player = `${run}-${j}-${k}`
      for (let i = 0; i < P; i++) {
        const m = (j + i) % P
        if (partitionOf(`b${m}/${player}`, P) === m) return { board: `b${m}`, player }
      }
    }
  }
  const phase = async () => {
    let done = false
    const sampled = sampleWaits(() => done)
    const cpu0 = await backendCpu()
    const own0 = process.cpuUsage()
    const statements0 = { ...statements }
    const batchMs: number[] = []
    const eventMs: number[] = []
    const readMs: number[] = []
    const projection = { ...applyMod.leaderboardsProjection, apply: async (...a: Parameters<typeof applyMod.leaderboardsProjection.apply>) => {
      const t = performance.now()
      const r = await applyMod.leaderboardsProjection.apply(...a)
      readMs.push(performance.now() - t)
      return r
    } }
    const kick = (part: (typeof parts)[number]) => {
      if (part.busy || part.queue.length === 0) return
      part.busy = true
      const items = part.queue.splice(0, 500)
      const messages = items.map((it) => ({ subject: subjects.event(prefix, part.p, 'score.submitted'), seq: ++part.seq, body: it.body, storedAt: new Date() }))
      const owner = { projection, partition: part.p, token: part.token, partitions: P, stream: '' }
      const t0 = performance.now()
      void apply(db, owner, part.checkpoint, messages, new Date()).then((r) => {
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
        const e = { id: `${run}-${j}`, by: 'ingest', type: 'score.submitted' as const, v: 1, data: { ...boardOf(run, j), score: sent }, at: new Date().toISOString() }
        const part = parts[partitionOf(keyOf(e), P)]
        part.queue.push({ body: new TextEncoder().encode(JSON.stringify(e)), sent })
        kick(part)
      }
    }
    while (parts.some((p) => p.busy || p.queue.length)) await Bun.sleep(5)
    const own = process.cpuUsage(own0)
    const pgCpu = (await backendCpu()) - cpu0
    done = true
    const groups = statements.groups - statements0.groups
    const grouped = statements.grouped - statements0.grouped
    const made = committer ? `; statements ${batchMs.length - grouped + groups} (${groups} groups of ${(grouped / Math.max(1, groups)).toFixed(1)} batches)` : ''
    return { batchMs, eventMs, readMs, pgCpu, ownCpu: (own.user + own.system) / 1000, waits: await sampled, made }
  }
  // The side's database and streams go with it (createTestEnv's cleanup).
  return { name, phase, close: () => Promise.all([database.close(), sampler?.close()]).then(() => env.cleanup()) }
}

const sides = [await side('this', thisApply, thisBatch, await committerOf(`${import.meta.dir}/..`))]
if (compare) {
  const [applyMod, batchMod] = await Promise.all([import(`${compare}/stream-workers/src/projections/leaderboards/apply.ts`), import(`${compare}/stream-workers/src/runtime/batch.ts`)])
  sides.unshift(await side(compare, applyMod, batchMod, await committerOf(compare)))
}
for (const s of sides) await s.phase() // warm-up
for (let r = 0; r < rounds; r++) {
  for (const s of r % 2 ? [...sides].reverse() : sides) {
    const { batchMs, eventMs, readMs, pgCpu, ownCpu, waits: waited, made } = await s.phase()
    const load = (await Bun.file('/proc/loadavg').text()).split(' ').slice(0, 3).join(' ')
    console.log(`round ${r + 1} ${s.name}: batches ${batchMs.length}, batch apply p50 / p99 ${fmt(batchMs)} ms (its read ${fmt(readMs)}); tick->commit ${fmt(eventMs)} ms; Postgres CPU ${pgCpu} ms, client CPU ${ownCpu.toFixed(0)} ms${made}; load ${load}`)
    if (waits) console.log(`  waits: ${waited}`)
  }
}
for (const s of sides) await s.close()
process.exit(0)
