/**
 * Probe (not part of `bench/run.ts`): how long partitions go without an owner when two worker
 * processes start together on the projection benchmark's backlog. Both start at once (lease ttl
 * 3 s as in bench/projection.ts, or the second argument); from their logs (LOG_LEVEL=debug) it prints, per partition that
 * moved from one to the other, when it was released, acquired again and when its leaderboards
 * runner applied its first batch under the new owner, and when every partition had applied a batch
 * under its final owner (the spread), all in ms from the start.
 *
 *   flock /tmp/bench.lock node_modules/.bin/bun bench/handover-probe.ts [events=200000] [ttl ms=3000]
 */
import { storedScore } from './lib/events'
import { backlogOf } from './lib/backlog'
import { deploy, publishAll } from './lib/fanfare'
import postgres from 'postgres'
const EVENTS = Number(process.argv[2] ?? 200000)
const d = await deploy({ FANFARE_LEASE_TTL_MS: process.argv[3] ?? '3000', LOG_LEVEL: 'debug' })
const sql = postgres(d.env.vars.DATABASE_URL, { max: 1, onnotice: () => {} })
try {
  const { FANFARE_SUBJECT_PREFIX: prefix, FANFARE_PARTITIONS: partitions } = d.env.config
  const messages = Array.from({ length: EVENTS }, (_, i) => storedScore(prefix, partitions, 'proj', i))
  const seqs = await publishAll(d.js, messages)
  const backlog = backlogOf('leaderboards', messages.map((m) => m.subject), seqs)
  const t0 = Date.now()
  d.startWorker()
  d.startWorker()
  while ((await backlog.progress(sql)).applied < EVENTS && Date.now() - t0 < 60000) await Bun.sleep(20)
  const allAppliedMs = Date.now() - t0
  // Per partition: its last acquisition (by whom), a release before it, and the first batch after it.
  const info = new Map<number, { acquiredAt: number; releasedAt?: number; firstBatchAt?: number; by: string }>()
  const parsed = d.workers.map((w) => ({ name: w.name, lines: w.output().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l)) }))
  const at = (l: { time: number | string }) => (typeof l.time === 'number' ? l.time : Date.parse(l.time)) - t0
  for (const { name, lines } of parsed) {
    for (const l of lines) {
      if (l.msg !== 'partition acquired') continue
      const cur = info.get(l.partition)
      if (!cur || at(l) > cur.acquiredAt) info.set(l.partition, { acquiredAt: at(l), by: name })
    }
  }
  // "partition released" is logged once the key is deleted, so the next owner may log its
  // acquisition a few ms before it.
  for (const { lines } of parsed) for (const l of lines) if (l.msg === 'partition released') info.get(l.partition)!.releasedAt = at(l)
  for (const { name, lines } of parsed) {
    for (const l of lines) {
      if (l.msg !== 'batch applied' || l.projection !== 'leaderboards') continue
      const cur = info.get(l.partition)!
      if (cur.by === name && at(l) >= cur.acquiredAt && cur.firstBatchAt === undefined) cur.firstBatchAt = at(l)
    }
  }
  const moved = [...info].filter(([, v]) => v.releasedAt !== undefined)
  console.log(
    JSON.stringify({
      allAppliedMs,
      spreadAtMs: Math.max(...[...info.values()].map((v) => v.firstBatchAt ?? NaN)),
      heldBy: Object.fromEntries(parsed.map(({ name }) => [name, [...info].filter(([, v]) => v.by === name).map(([p]) => p).sort()])),
      moved: moved.map(([p, v]) => ({
        p,
        releasedAt: v.releasedAt,
        acquiredAt: v.acquiredAt,
        firstBatchAt: v.firstBatchAt,
        releaseToAcquireMs: v.acquiredAt - v.releasedAt!,
        releaseToBatchMs: (v.firstBatchAt ?? NaN) - v.releasedAt!,
      })),
    }),
  )
} finally {
  await sql.end()
  await d.close()
}
