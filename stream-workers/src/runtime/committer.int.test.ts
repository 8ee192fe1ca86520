import { afterEach, describe, expect, test } from 'bun:test'
import { and, eq, sql } from 'drizzle-orm'
import { connectBunSql, rowsOf, type Database } from '../../../core/db/client'
import { channelVersions, leaderboardEntries, leaderboards, projectionCheckpoints } from '../../../core/db/schema'
import { partitionOf, subjects } from '../../../core/events'
import { until } from '../../../core/testing/wait'
import { leaderboardsProjection } from '../projections/leaderboards/apply'
import { boardScores, byChannel, caughtUp, createWorld, publishEvent, readNotices, storedEvent, holdVersionRow, type World } from '../testing/harness'
import { applyBatch, claimFence, commitGroup, prepareBatch, type BatchMessage, type BatchOwner, type PreparedBatch } from './batch'
import { createBatchCommitter } from './committer'
import { ROOT_CONTEXT, trace, TraceFlags, type ProxyTracerProvider } from '@opentelemetry/api'
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace'
import { loadConfig } from '../../../core/config'
import { startTracing } from '../../../core/tracing'
import { CheckpointMovedError, FencedError, sqlStateOf } from './errors'

let world: World | undefined
const opened: Database[] = []
afterEach(async () => {
  for (const d of opened.splice(0)) await d.close()
  await world?.close()
  world = undefined
})

const PARTITIONS = 4

/** A player of `board` whose key lands in `partition`. */
const playerIn = (board: string, partition: number, tag: string) => {
  for (let i = 0; ; i++) if (partitionOf(`${board}/${tag}${i}`, PARTITIONS) === partition) return `${tag}${i}`
}

/** Score messages of `board` for `partition`, numbered from `firstSeq`. */
const scores = (w: World, partition: number, firstSeq: number, entries: [player: string, score: number][], board = 'arena'): BatchMessage[] =>
  entries.map(([player, score], i) => ({
    subject: subjects.event(w.config.FANFARE_SUBJECT_PREFIX, partition, 'score.submitted'),
    seq: firstSeq + i,
    body: new TextEncoder().encode(JSON.stringify(storedEvent('score.submitted', { board, player, score }))),
    storedAt: new Date(),
  }))

/** The leaderboards projection, counting the batches it has read and evolved. */
const counting = () => {
  let reads = 0
  const projection = { ...leaderboardsProjection, apply: (...a: Parameters<typeof leaderboardsProjection.apply>) => leaderboardsProjection.apply(...a).finally(() => reads++) }
  return { projection, reads: () => reads }
}

/**
 * A committer whose group statements are recorded, and whose failed ones fail the test. Its own
 * client, with connections to spare: the reads of queued batches must not wait behind the
 * statement that waits for the held version row.
 */
const committerOf = async (w: World) => {
  const groups: number[][] = []
  const failed: unknown[] = []
  const logger = { warn: (o: { err: unknown }) => failed.push(o.err) } as never
  const database = await connectBunSql(w.env.vars.DATABASE_URL, { max: 8 })
  opened.push(database)
  return { committer: createBatchCommitter({ db: database.db, logger, onGroup: (ps) => groups.push(ps) }), groups, failed }
}

const ownerOf = async (w: World, partition: number, projection = leaderboardsProjection): Promise<BatchOwner> => ({
  projection,
  partition,
  token: await claimFence(w.database.db, 'leaderboards', partition),
  partitions: PARTITIONS,
  stream: '',
})

const checkpoints = async (w: World) =>
  Object.fromEntries(
    (await rowsOf<{ partition: number; seq: string; tx: string }>(w.database.db, sql`select partition, seq, xmin::text as tx from projection_checkpoints where projection = 'leaderboards'`)).map((r) => [
      r.partition,
      { seq: Number(r.seq), tx: r.tx },
    ]),
  )

const arenaVersion = async (w: World) => Number((await w.database.db.select().from(channelVersions).where(eq(channelVersions.channel, 'leaderboard:arena')))[0]?.version ?? 0)

/** A scored board (no recheck: batches on it may be grouped) with one standing, version 1. */
async function scoredArena(w: World) {
  await w.database.db.insert(leaderboards).values({ board: 'arena', sortOrder: 'desc', operator: 'best', hasScores: true })
  await w.database.db.insert(channelVersions).values({ channel: 'leaderboard:arena', version: 1 })
}

describe('group commit (BatchCommitter)', () => {
  test('batches of two partitions that queue behind a statement commit as one, exactly once, with consecutive versions', async () => {
    const w = (world = await createWorld({ FANFARE_PARTITIONS: String(PARTITIONS) }))
    await scoredArena(w)
    const { projection, reads } = counting()
    const [o0, o1, o2] = await Promise.all([0, 1, 2].map((p) => ownerOf(w, p, projection)))
    const { committer, groups, failed } = await committerOf(w)
    const [a, b, c, d] = [playerIn('arena', 0, 'a'), playerIn('arena', 0, 'b'), playerIn('arena', 1, 'c'), playerIn('arena', 2, 'd')]

    const hold = await holdVersionRow(w, 'leaderboard:arena')
    // Partition 2's batch goes first and waits for the held row; 0 and 1 queue behind it.
    const first = committer.apply(o2, 0, scores(w, 2, 1, [[d, 1]]), new Date())
    await hold.waiting()
    const r0 = committer.apply(o0, 0, scores(w, 0, 1, [[a, 10], [b, 20]]), new Date())
    await until('partition 0 to wait in the committer', () => reads() === 2)
    const r1 = committer.apply(o1, 0, scores(w, 1, 1, [[c, 30]]), new Date())
    await until('partition 1 to wait behind it', () => reads() === 3)
    await hold.release()
    const [x2, x0, x1] = await Promise.all([first, r0, r1])

    expect(failed).toEqual([])
    expect(groups).toEqual([[0, 1]])
    expect(x2.runs.map((r) => [r.version, JSON.parse(r.body).changes.length])).toEqual([[2, 1]])
    // In the group, partition 0's two changes first (versions 3, 4), then partition 1's (5).
    expect(x0).toMatchObject({ applied: 2, skipped: 0, checkpoint: 2 })
    expect(x0.runs.map((r) => [r.channel, r.version, JSON.parse(r.body).changes.map((ch: { player: string }) => ch.player)])).toEqual([['leaderboard:arena', 3, [a, b]]])
    expect(x1).toMatchObject({ applied: 1, skipped: 0, checkpoint: 1 })
    expect(x1.runs.map((r) => [r.channel, r.version, JSON.parse(r.body).changes.map((ch: { player: string }) => ch.player)])).toEqual([['leaderboard:arena', 5, [c]]])
    expect(await arenaVersion(w)).toBe(5)
    expect(await boardScores(w, 'arena')).toEqual({ [a]: 10, [b]: 20, [c]: 30, [d]: 1 })
    // One transaction wrote both checkpoints.
    const cps = await checkpoints(w)
    expect([cps[0].seq, cps[1].seq, cps[2].seq]).toEqual([2, 1, 1])
    expect(cps[0].tx).toBe(cps[1].tx)
    expect(cps[2].tx).not.toBe(cps[0].tx)

    // Redelivered to their runners: skipped; from a stale checkpoint: refused, nothing written twice.
    expect(await committer.apply(o0, 2, scores(w, 0, 1, [[a, 10], [b, 20]]), new Date())).toMatchObject({ applied: 0, skipped: 2, runs: [] })
    await expect(committer.apply(o1, 0, scores(w, 1, 1, [[c, 30]]), new Date())).rejects.toBeInstanceOf(CheckpointMovedError)
    expect(await arenaVersion(w)).toBe(5)
  })

  test("a batch's statement waits for `ready` (the runner's skip check), made beside its reads: if it rejects after them, nothing is written, alone or through the committer", async () => {
    const w = (world = await createWorld({ FANFARE_PARTITIONS: String(PARTITIONS) }))
    await scoredArena(w)
    const { projection, reads } = counting()
    const o0 = await ownerOf(w, 0, projection)
    const { committer, groups, failed } = await committerOf(w)
    const a = playerIn('arena', 0, 'a')
    const refused = new Error('the consumer skipped stored events')
    for (const [n, apply] of [
      [1, (ready: Promise<unknown>) => applyBatch(w.database.db, o0, 0, scores(w, 0, 1, [[a, 10]]), new Date(), { ready })],
      [2, (ready: Promise<unknown>) => committer.apply(o0, 0, scores(w, 0, 1, [[a, 10]]), new Date(), { ready })],
    ] as const) {
      const check = Promise.withResolvers<void>()
      // A thenable, not the promise itself: `await` calls its `then` (a native promise's it would
      // not), which says the batch has reached the wait.
      const waiting = Promise.withResolvers<void>()
      const ready = { then: (ok: () => void, ko: (err: unknown) => void) => (waiting.resolve(), check.promise.then(ok, ko)) } as unknown as Promise<void>
      const applied = apply(ready)
      // The batch was read and evolved; its statement waits for the check.
      await until('the batch to be read', () => reads() === n)
      await waiting.promise
      check.reject(refused)
      await expect(applied).rejects.toBe(refused)
      expect(await boardScores(w, 'arena')).toEqual({})
      expect(await arenaVersion(w)).toBe(1)
      expect((await checkpoints(w))[0].seq).toBe(0)
    }
    // A check that passes lets the same batch apply.
    expect(await committer.apply(o0, 0, scores(w, 0, 1, [[a, 10]]), new Date(), { ready: Promise.resolve() })).toMatchObject({ applied: 1, checkpoint: 1 })
    expect(await boardScores(w, 'arena')).toEqual({ [a]: 10 })
    expect(failed).toEqual([])
    expect(groups).toEqual([])
  })

  test('a fenced partition in a group: the group writes nothing, then the other applies alone and the fenced one gets its error', async () => {
    const w = (world = await createWorld({ FANFARE_PARTITIONS: String(PARTITIONS) }))
    await scoredArena(w)
    const { projection, reads } = counting()
    const [o0, o1, o2, o3] = await Promise.all([0, 1, 2, 3].map((p) => ownerOf(w, p, projection)))
    // A newer owner of partition 1 claimed its fence: o1's token is stale.
    await claimFence(w.database.db, 'leaderboards', 1)
    const [a, c, d, e] = [playerIn('arena', 0, 'a'), playerIn('arena', 1, 'c'), playerIn('arena', 2, 'd'), playerIn('arena', 3, 'e')]

    // commitGroup alone: all or nothing.
    const prepared = async (owner: BatchOwner, messages: BatchMessage[]) => {
      const p = await prepareBatch(w.database.db, owner, 0, messages, new Date())
      if ('done' in p) throw new Error('nothing to write')
      return p as PreparedBatch
    }
    const p0 = await prepared(o0, scores(w, 0, 1, [[a, 10]]))
    const p1 = await prepared(o1, scores(w, 1, 1, [[c, 30]]))
    expect(await commitGroup(w.database.db, [p0, p1])).toBeUndefined()
    expect(await arenaVersion(w)).toBe(1)
    expect(await boardScores(w, 'arena')).toEqual({})
    expect((await checkpoints(w))[0].seq).toBe(0)

    // Through the committer: partition 0 applies, partition 1 gets FencedError, 3's checkpoint moved.
    const { committer, groups, failed } = await committerOf(w)
    await w.database.db.update(projectionCheckpoints).set({ seq: 7 }).where(and(eq(projectionCheckpoints.projection, 'leaderboards'), eq(projectionCheckpoints.partition, 3)))
    const hold = await holdVersionRow(w, 'leaderboard:arena')
    const first = committer.apply(o2, 0, scores(w, 2, 1, [[d, 1]]), new Date())
    await hold.waiting()
    const r0 = committer.apply(o0, 0, scores(w, 0, 1, [[a, 10]]), new Date())
    const r1 = committer.apply(o1, 0, scores(w, 1, 1, [[c, 30]]), new Date())
    const r3 = committer.apply(o3, 0, scores(w, 3, 1, [[e, 40]]), new Date())
    // Settled from now on: one that rejects while the test still waits is not an unhandled rejection.
    const settled = Promise.allSettled([first, r0, r1, r3])
    await until('three batches to wait in the committer', () => reads() === 6)
    await hold.release()
    const [x2, x0, x1, x3] = await settled
    // The group of 0, 1 and 3 wrote nothing (no error: its guard refused), then each ran alone.
    expect(failed).toEqual([])
    expect(groups).toEqual([])
    expect(x2.status).toBe('fulfilled')
    expect(x0).toMatchObject({ status: 'fulfilled', value: { applied: 1, checkpoint: 1 } })
    expect(x1.status === 'rejected' && x1.reason).toBeInstanceOf(FencedError)
    expect(x3.status === 'rejected' && x3.reason).toBeInstanceOf(CheckpointMovedError)
    expect(await boardScores(w, 'arena')).toEqual({ [a]: 10, [d]: 1 })
    expect(await arenaVersion(w)).toBe(3)
    const runs = [x2, x0].flatMap((x) => (x.status === 'fulfilled' ? x.value.runs.map((r) => r.version) : []))
    expect(runs.sort()).toEqual([2, 3])
    const cps = await checkpoints(w)
    expect([cps[0].seq, cps[1].seq, cps[2].seq, cps[3].seq]).toEqual([1, 0, 1, 7])
  })

  test('a group statement canceled for statement_timeout is counted and its batches apply alone; under the halved limit a fenced batch is still refused, nothing applies twice', async () => {
    const w = (world = await createWorld({ FANFARE_PARTITIONS: String(PARTITIONS) }))
    await scoredArena(w)
    // 0.3 s per new entry row; statements of the committer's own sessions canceled after 1.5 s
    // (lock waits included): a batch of 3 fits alone, two of them together (1.8 s) do not.
    await w.database.db.execute(
      sql.raw(`create function fanfare_test_slow_row() returns trigger language plpgsql as $$ begin perform pg_sleep(0.3); return new; end $$;
               create trigger fanfare_test_slow before insert on leaderboard_entries for each row execute function fanfare_test_slow_row()`),
    )
    const dbName = new URL(w.env.vars.DATABASE_URL).pathname.slice(1)
    await w.database.db.execute(sql.raw(`alter database "${dbName}" set statement_timeout = '1500ms'`))
    const { projection, reads } = counting()
    const [o0, o1, o2, o3] = await Promise.all([0, 1, 2, 3].map((p) => ownerOf(w, p, projection)))
    // A newer owner of partition 1 claimed its fence: o1's token is stale.
    await claimFence(w.database.db, 'leaderboards', 1)
    const players = (p: number, tag: string, n: number) => Array.from({ length: n }, (_, i) => playerIn('arena', p, `${tag}${i}x`))
    const [a, c, d, e] = [players(0, 'a', 5), players(1, 'c', 1), players(2, 'd', 2), players(3, 'e', 5)]
    const failed: unknown[] = []
    const logger = { warn: (o: { err: unknown }) => failed.push(o.err) } as never
    const database = await connectBunSql(w.env.vars.DATABASE_URL, { max: 8 })
    opened.push(database)
    const groups: number[][] = []
    let timeouts = 0
    const committer = createBatchCommitter({ db: database.db, logger, onGroup: (ps) => groups.push(ps), onTimeout: () => timeouts++ })
    const s = (partition: number, firstSeq: number, ps: string[]) => scores(w, partition, firstSeq, ps.map((p, i): [string, number] => [p, firstSeq + i]))

    // 1. Partitions 0 and 3 queue behind 2's statement, then go as one group of 6 rows: canceled.
    let hold = await holdVersionRow(w, 'leaderboard:arena')
    const first = committer.apply(o2, 0, s(2, 1, [d[0]]), new Date())
    await hold.waiting()
    const r0 = committer.apply(o0, 0, s(0, 1, a.slice(0, 3)), new Date())
    await until('partition 0 to wait in the committer', () => reads() === 2)
    const r3 = committer.apply(o3, 0, s(3, 1, e.slice(0, 3)), new Date())
    await until('partition 3 to wait behind it', () => reads() === 3)
    await hold.release()
    const [x2, x0, x3] = await Promise.all([first, r0, r3])
    expect(timeouts).toBe(1)
    expect(failed.map(sqlStateOf)).toEqual(['57014'])
    expect(groups).toEqual([])
    // Each applied alone instead.
    expect([x2.checkpoint, x0.checkpoint, x3.checkpoint]).toEqual([1, 3, 3])

    // 2. Now at most 3 events a group: 0 (2 events) and the fenced 1 (1) go together, 3 (2) beside
    // them. The group writes nothing (1 is fenced); 0 applies alone, 1 gets its error.
    hold = await holdVersionRow(w, 'leaderboard:arena')
    const second = committer.apply(o2, 1, s(2, 2, [d[1]]), new Date())
    await hold.waiting()
    const q0 = committer.apply(o0, 3, s(0, 4, a.slice(3)), new Date())
    await until('partition 0 to wait in the committer', () => reads() === 5)
    const q1 = committer.apply(o1, 0, s(1, 1, c), new Date())
    await until('partition 1 to wait behind it', () => reads() === 6)
    const q3 = committer.apply(o3, 3, s(3, 4, e.slice(3)), new Date())
    await until('partition 3 to wait behind them', () => reads() === 7)
    const settled = Promise.allSettled([second, q0, q1, q3])
    await hold.release()
    const [y2, y0, y1, y3] = await settled
    expect(timeouts).toBe(1)
    expect(groups).toEqual([])
    expect(y2).toMatchObject({ status: 'fulfilled', value: { applied: 1, checkpoint: 2 } })
    expect(y0).toMatchObject({ status: 'fulfilled', value: { applied: 2, checkpoint: 5 } })
    expect(y1.status === 'rejected' && y1.reason).toBeInstanceOf(FencedError)
    expect(y3).toMatchObject({ status: 'fulfilled', value: { applied: 2, checkpoint: 5 } })

    // Every event of 0, 2 and 3 once (a sum would show twice), none of the fenced 1; a version each.
    const expected = Object.fromEntries([...a.map((p, i) => [p, i + 1]), ...d.map((p, i) => [p, i + 1]), ...e.map((p, i) => [p, i + 1])])
    expect(await boardScores(w, 'arena')).toEqual(expected)
    expect(await arenaVersion(w)).toBe(1 + 12)
    const cps = await checkpoints(w)
    expect([cps[0].seq, cps[1].seq, cps[2].seq, cps[3].seq]).toEqual([5, 0, 2, 5])
    // Redelivered: skipped.
    expect(await committer.apply(o0, 5, s(0, 4, a.slice(3)), new Date())).toMatchObject({ applied: 0, skipped: 2, runs: [] })
  })

  test('workers with several partitions group their batches; crashes before the ack and redeliveries apply nothing twice', async () => {
    // Small batches: many per partition, so that some become ready while another is in flight.
    const w = (world = await createWorld({ FANFARE_PARTITIONS: String(PARTITIONS), FANFARE_BATCH_SIZE: '5' }))
    // Scored already (no recheck: every batch may join a group), its version row there to be held.
    await w.database.db.insert(leaderboards).values({ board: 'tot', sortOrder: 'desc', operator: 'sum', hasScores: true })
    await w.database.db.insert(channelVersions).values({ channel: 'leaderboard:tot', version: 0 })
    let crashes = 0
    let batches = 0
    const groups: number[][] = []
    const workers = await w.startWorker({
      hooks: {
        onBeforeAck: ({ projection }) => {
          // Every other committed batch "crashes" before its ack, three times: they are redelivered.
          if (projection === 'leaderboards' && crashes < 3 && ++batches % 2 === 0) {
            crashes++
            throw new Error('simulated crash before ack')
          }
        },
        onGroupCommit: ({ projection, partitions }) => void (projection === 'leaderboards' && groups.push(partitions)),
      },
    })
    // Bursts over every partition at once: each runner has a backlog, so batches become ready
    // while another partition's statement is in flight. The first statement waits for the version
    // row held here, so that the others queue behind it whatever the machine's speed.
    const hold = await holdVersionRow(w, 'leaderboard:tot')
    const expected: Record<string, number> = {}
    let changes = 0
    for (let burst = 0; burst < 3; burst++) {
      const sends: Promise<unknown>[] = []
      for (let round = 0; round < 10; round++) {
        for (let i = 0; i < 16; i++) {
          const player = `p${i}`
          const score = burst * 10 + round + 1
          expected[player] = (expected[player] ?? 0) + score
          changes++
          sends.push(publishEvent(w, storedEvent('score.submitted', { board: 'tot', player, score })))
        }
      }
      await Promise.all(sends)
      if (burst === 0) {
        await hold.waiting()
        await Bun.sleep(300)
        await hold.release()
      }
    }
    await caughtUp(w)
    // Runs of the crashed batches stay in the outbox until the sweeper publishes them (2 s).
    const notices = await until('every version published', async () => {
      const list = byChannel(await readNotices(w)).get('leaderboard:tot') ?? []
      return new Set(list.map((n) => n.version)).size === changes ? list : undefined
    })
    await workers.stop()
    expect(crashes).toBeGreaterThan(0)
    expect(groups.length).toBeGreaterThan(0)
    // Sums: a batch applied twice would show.
    expect(await boardScores(w, 'tot')).toEqual(expected)
    expect(Number((await w.database.db.select().from(channelVersions).where(eq(channelVersions.channel, 'leaderboard:tot')))[0].version)).toBe(changes)
    // Every version once, none missing; a version published twice (the sweeper) holds the same change.
    expect([...new Set(notices.map((n) => n.version))].sort((x, y) => x - y)).toEqual(Array.from({ length: changes }, (_, i) => i + 1))
    const byVersion = new Map<number, string>()
    for (const n of notices) {
      const data = JSON.stringify(n.data)
      expect(byVersion.get(n.version) ?? data).toBe(data)
      byVersion.set(n.version, data)
    }
    expect((await w.database.db.select().from(leaderboardEntries)).length).toBe(16)
  })
})

describe('the trace context of a batch (tracedBatch hands it down instead of making it active)', () => {
  test("a batch's statement span is a child of the context it is given: recorded under a sampled one, not at all under an unsampled one", async () => {
    const w = (world = await createWorld({ FANFARE_PARTITIONS: String(PARTITIONS) }))
    await scoredArena(w)
    // Roots always sampled: a statement span that lost its unsampled parent would be recorded.
    const exporter = new InMemorySpanExporter()
    const tracing = startTracing(loadConfig({ OTEL_TRACES_SAMPLER: 'parentbased_traceidratio', OTEL_TRACES_SAMPLER_ARG: '1' }), 'committer-test', exporter)!
    try {
      const { committer, failed } = await committerOf(w)
      const o0 = await ownerOf(w, 0)
      const batchContext = (traceId: string, spanId: string, traceFlags: number) => trace.setSpanContext(ROOT_CONTEXT, { traceId, spanId, traceFlags, isRemote: false })
      const unsampled = batchContext('a'.repeat(32), 'b'.repeat(16), TraceFlags.NONE)
      const sampled = batchContext('c'.repeat(32), 'd'.repeat(16), TraceFlags.SAMPLED)
      await committer.apply(o0, 0, scores(w, 0, 1, [[playerIn('arena', 0, 'u'), 1]]), new Date(), { trace: unsampled })
      await committer.apply(o0, 1, scores(w, 0, 2, [[playerIn('arena', 0, 's'), 2]]), new Date(), { trace: sampled })
      expect(failed).toEqual([])
      await ((trace.getTracerProvider() as ProxyTracerProvider).getDelegate() as unknown as { forceFlush: () => Promise<void> }).forceFlush()
      const statements = exporter.getFinishedSpans().filter((s) => s.name === 'postgres batch statement')
      expect(statements.map((s) => [s.spanContext().traceId, s.parentSpanContext?.spanId])).toEqual([['c'.repeat(32), 'd'.repeat(16)]])
    } finally {
      await tracing.stop()
    }
  })
})
