/**
 * What the catch of unclaimed messages (stream-workers/src/runtime/unclaimed.ts) costs a worker: it
 * is delivered every event (headers only) and skips those a projection claims. On a backlog of
 * stored scores, a worker process runs (a) the catch alone, (b) the catch with the leaderboards
 * projection; the sides take turns. Each prints its wall time to the last event and the worker's
 * CPU time (user + system of this process, where the worker runs; the publisher is done before).
 *
 *   flock /tmp/bench.lock bun bench/unclaimed-probe.ts [events=200000] [rounds=2] [alone]
 */
import postgres from 'postgres'
import { jetstream } from '@nats-io/jetstream'
import { connectNats, ensureStreams } from '../core/nats'
import { createTestEnv } from '../core/testing/env'
import { startTestWorker } from '../stream-workers/src/testing/harness'
import { leaderboardsProjection } from '../stream-workers/src/projections/leaderboards/apply'
import { backlogOf } from './lib/backlog'
import { storedScore } from './lib/events'
import { publishAll } from './lib/fanfare'

const events = Number(process.argv[2] ?? 200_000)
const rounds = Number(process.argv[3] ?? 2)
/** `alone`: only side (a). */
const only = process.argv[4]

async function side(withLeaderboards: boolean) {
  const env = await createTestEnv({ FANFARE_PARTITIONS: '8', FANFARE_LEASE_TTL_MS: '3000', ...(process.env.FANFARE_BATCH_SIZE ? { FANFARE_BATCH_SIZE: process.env.FANFARE_BATCH_SIZE } : {}) })
  const nc = await connectNats(env.vars.NATS_URL, 'unclaimed-probe')
  const sql = postgres(env.vars.DATABASE_URL, { max: 1, onnotice: () => {} })
  try {
    await ensureStreams(nc, env.config)
    const messages = Array.from({ length: events }, (_, i) => storedScore(env.config.FANFARE_SUBJECT_PREFIX, 8, 'probe', i))
    const seqs = await publishAll(jetstream(nc), messages)
    const last = Math.max(...seqs)
    const backlog = backlogOf('leaderboards', messages.map((m) => m.subject), seqs)
    const cpu0 = process.cpuUsage()
    const t0 = performance.now()
    const worker = await startTestWorker(env, { projections: withLeaderboards ? [leaderboardsProjection] : [] })
    let catchDone = 0
    for (;;) {
      const [row] = await sql`select seq from projection_checkpoints where projection = 'unclaimed' and partition = 0`
      if (!catchDone && Number(row?.seq ?? 0) >= last) catchDone = performance.now()
      if (catchDone && (!withLeaderboards || (await backlog.progress(sql)).applied >= events)) break
      await Bun.sleep(20)
    }
    const wall = (performance.now() - t0) / 1000
    const cpu = process.cpuUsage(cpu0)
    await worker.stop()
    const cpuS = (cpu.user + cpu.system) / 1e6
    console.log(
      `${withLeaderboards ? 'catch + leaderboards' : 'catch alone        '}: ${events} events, wall ${wall.toFixed(2)} s (catch done at ${((catchDone - t0) / 1000).toFixed(2)} s, ` +
        `${Math.round(events / ((catchDone - t0) / 1000))} events/s), worker CPU ${cpuS.toFixed(2)} s = ${((cpuS * 1e6) / events).toFixed(1)} us/event`,
    )
  } finally {
    await sql.end()
    await nc.close()
    await env.cleanup()
  }
}

for (let r = 0; r < rounds; r++) {
  await side(false)
  if (only !== 'alone') await side(true)
}
process.exit(0)
