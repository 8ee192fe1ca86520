/**
 * (3) Projection throughput: events/s the stream workers apply exactly once into Postgres (read
 * model + checkpoint + channel version + outbox in one transaction per batch), with 1 and 2 worker
 * processes. Events are stored in JetStream first (raw publish), then the workers start, and the
 * rows are counted from the moment they hold their share of the partitions.
 * Baseline: a naive consumer applying one event per transaction (upsert + checkpoint), same events.
 */
import { AckPolicy, jetstream, jetstreamManager } from '@nats-io/jetstream'
import postgres from 'postgres'
import { pick, type BenchContext } from './lib/context'
import { storedScore } from './lib/events'
import { deploy, publishAll, waitForWorkers } from './lib/fanfare'
import type { Figure } from './lib/report'

async function workersRate(ctx: BenchContext, workers: number, events: number): Promise<{ rate: number; naive?: number }> {
  // Leases scanned every second (ttl / 3) instead of every 3.3 s: a second worker gets its share
  // within ~2 s of starting instead of ~4-7 s, by when one worker had applied most of the backlog
  // and the figure measured the hand-over instead of the apply rate.
  const d = await deploy({ FANFARE_LEASE_TTL_MS: '3000' })
  const sql = postgres(d.env.vars.DATABASE_URL, { max: 2, onnotice: () => {} })
  try {
    // Like the baseline, the workers start on a backlog already stored in JetStream, so the
    // figure is the apply rate, not the rate this one publisher can store events at.
    const { FANFARE_SUBJECT_PREFIX: prefix, FANFARE_PARTITIONS: partitions } = d.env.config
    await publishAll(d.js, (function* () {
      for (let i = 0; i < events; i++) yield storedScore(prefix, partitions, 'proj', i)
    })())
    for (let i = 0; i < workers; i++) d.startWorker()
    // The clock starts once the workers hold their share of the partitions: process start-up and
    // the hand-over of half the partitions to a second worker (a stall of a second or two that
    // happens once per join) are not the apply rate. The first worker applies meanwhile; what it
    // applied is not counted.
    const count = async () => (await sql`select count(*)::int as n from leaderboard_entries`)[0].n as number
    const deadline = Date.now() + 120_000
    let first = 0
    while ((first = await count()) === 0 && Date.now() < deadline) await Bun.sleep(5)
    let start = performance.now()
    await waitForWorkers(d, workers)
    const spread = await count()
    if (spread <= events / 2) {
      first = spread
      start = performance.now()
    } else {
      // Too little left to measure after the split (smoke mode): from the first applied row.
      ctx.notes.push(`projection with ${workers} worker(s): ${spread} of ${events} events applied before the partitions were spread; measured from the first applied row`)
    }
    let n = first
    while ((n = await count()) < events && Date.now() < deadline) await Bun.sleep(10)
    const rate = (n - first) / ((performance.now() - start) / 1000)
    if (n < events) ctx.notes.push(`projection with ${workers} worker(s): only ${n} of ${events} applied within 120 s`)
    ctx.log(`  ${workers} worker(s): ${Math.round(rate)} events/s`)
    if (workers !== 1) return { rate }
    return { rate, naive: await naive(ctx, d.nc, d.env.config.FANFARE_STREAM, sql, pick(ctx, 100, 2000)) }
  } finally {
    await sql.end()
    await d.close()
  }
}

/** One event per transaction: the way a first version of a projector often looks. */
async function naive(ctx: BenchContext, nc: Parameters<typeof jetstreamManager>[0], stream: string, sql: postgres.Sql, count: number) {
  await sql`create table naive_entries (board text, player text, score float8, reached_seq bigint, primary key (board, player))`
  await sql`create table naive_checkpoint (id int primary key, seq bigint)`
  await sql`insert into naive_checkpoint values (1, 0)`
  const jsm = await jetstreamManager(nc)
  await jsm.consumers.add(stream, { durable_name: 'naive', ack_policy: AckPolicy.Explicit })
  const consumer = await jetstream(nc).consumers.get(stream, 'naive')
  const messages = await consumer.consume({ max_messages: 500 })
  const start = performance.now()
  let n = 0
  for await (const m of messages) {
    const e = m.json<{ data: { board: string; player: string; score: number } }>().data
    await sql.begin(async (tx) => {
      await tx`insert into naive_entries values (${e.board}, ${e.player}, ${e.score}, ${m.seq})
        on conflict (board, player) do update set score = greatest(naive_entries.score, excluded.score), reached_seq = excluded.reached_seq`
      await tx`update naive_checkpoint set seq = ${m.seq} where id = 1`
    })
    m.ack()
    if (++n >= count) break
  }
  const rate = n / ((performance.now() - start) / 1000)
  await messages.close()
  ctx.log(`  naive one event per transaction: ${Math.round(rate)} events/s`)
  return rate
}

export async function projection(ctx: BenchContext): Promise<Figure[]> {
  const events = pick(ctx, 300, 200_000)
  ctx.log(`projection: ${events} events`)
  const one = await workersRate(ctx, 1, events)
  const two = await workersRate(ctx, 2, events)
  const base = { group: 'projection', unit: '/s', baselineName: 'one event per transaction', baseline: one.naive!, target: { op: '>=' as const, ratio: 20 } }
  return [
    { ...base, name: 'events/s applied exactly once, 1 worker process', value: one.rate },
    { ...base, name: 'events/s applied exactly once, 2 worker processes', value: two.rate },
  ]
}
