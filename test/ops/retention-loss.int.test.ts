import { afterEach, describe, expect, test } from 'bun:test'
import { jetstream } from '@nats-io/jetstream'
import { connect, type NatsConnection } from '@nats-io/transport-node'
import { eq } from 'drizzle-orm'
import { startTestNode } from '../../api/src/test-support'
import { connectPostgres, type Database } from '../../core/db/client'
import { leaderboardEntries, leaderboards } from '../../core/db/schema'
import { dedupIdOf, keyOf, partitionOf, subjects } from '../../core/events'
import { createLogger, type Logger } from '../../core/logger'
import { createMetrics, type Metrics } from '../../core/metrics'
import { ensureStreams } from '../../core/nats'
import { startRetentionWatch } from '../../core/retention-watch'
import { createTestEnv, TEST_NATS_URL, type TestEnv } from '../../core/testing/env'
import { until } from '../../core/testing/wait'
import { startTestWorker, storedEvent } from '../../stream-workers/src/testing/harness'
import type { Workers } from '../../stream-workers/src/workers'

// Promise 1 against FANFARE_EVENT_RETENTION_MS: events acknowledged while every worker is down,
// and deleted by the retention before a worker is back, are lost to the read model. That must be
// loud (an error log naming projection, partition and range; a metric; GET /admin/projections),
// and a partition that lost nothing (whose applied events merely aged out) must report nothing.

type Line = Record<string, any>
/** A JSON logger whose lines the test reads. */
function capturedLogger(): { logger: Logger; lines: Line[] } {
  const lines: Line[] = []
  const logger = createLogger('info', {}, { format: 'json', output: { write: (l: string) => lines.push(JSON.parse(l)) } })
  return { logger, lines }
}

let cleanup: (() => Promise<void>)[] = []
afterEach(async () => {
  for (const c of cleanup.reverse()) await c().catch(() => {})
  cleanup = []
})

/**
 * A test's own environment, its database and NATS connection, and the streams: closed after the
 * test. `max`: the database pool's size.
 */
async function retentionWorld(overrides: Record<string, string>, max = 4) {
  const env: TestEnv = await createTestEnv(overrides)
  cleanup.push(() => env.cleanup())
  const database: Database = await connectPostgres(env.vars.DATABASE_URL, { max })
  cleanup.push(() => database.close())
  const nc: NatsConnection = await connect({ servers: TEST_NATS_URL })
  cleanup.push(() => nc.close())
  await ensureStreams(nc, env.config)
  return { env, database, nc }
}

/** The player names (on board `b`) whose score keys hash to partitions 0 and 1 of 2. */
function playersOnPartitions(board: string): [string, string] {
  const on = (p: number) => {
    for (let i = 0; ; i++) {
      const player = `p${i}`
      if (partitionOf(keyOf({ type: 'score.submitted', data: { board, player, score: 0 } } as any), 2) === p) return player
    }
  }
  return [on(0), on(1)]
}

describe('events deleted by retention before any worker applied them', () => {
  test('are reported (log, metric, admin) for the partition that lost them; a quiet partition reports nothing', async () => {
    const apiLog = capturedLogger()
    const apiMetrics = createMetrics()
    const node = await startTestNode(
      {
        FANFARE_PARTITIONS: '2',
        FANFARE_EVENT_RETENTION_MS: '2000',
        // JetStream wants the duplicate window within max_age.
        FANFARE_DEDUP_WINDOW_MS: '1000',
        FANFARE_LEASE_TTL_MS: '1500',
      },
      { logger: apiLog.logger, metrics: apiMetrics },
    )
    cleanup.push(() => node.close())
    const { env, database, base } = node
    const post = async (events: unknown[]) => {
      const res = await fetch(`${base}/v1/events`, {
        method: 'POST',
        headers: { authorization: `Bearer ${env.vars.FANFARE_INGEST_TOKEN}`, 'content-type': 'application/json' },
        body: JSON.stringify({ events }),
      })
      expect(res.status).toBe(202)
      return ((await res.json()) as { results: { seq: number }[] }).results.map((r) => r.seq)
    }
    const admin = async (path: string) =>
      (await fetch(`${base}${path}`, { headers: { authorization: `Bearer ${env.vars.FANFARE_ADMIN_TOKEN}` } })).json() as Promise<any>
    const partitionsOf = async (projection: string) =>
      ((await admin('/admin/projections')).projections as any[]).find((p) => p.projection === projection).partitions as any[]
    const scores = async () =>
      Object.fromEntries(
        (await database.db.select().from(leaderboardEntries).where(eq(leaderboardEntries.board, 'tally'))).map((r) => [r.player, Number(r.score)]),
      )

    await database.db.insert(leaderboards).values({ board: 'tally', sortOrder: 'desc', operator: 'sum' })
    const [lossy, quiet] = playersOnPartitions('tally')
    const score = (player: string, n: number) => ({ type: 'score.submitted', data: { board: 'tally', player, score: n } })

    // Both partitions get an event applied, which then ages out of the stream (applied: no loss).
    const workerLog = capturedLogger()
    const workerMetrics: Metrics = createMetrics()
    let workers: Workers = await startTestWorker(env, { logger: workerLog.logger, metrics: workerMetrics })
    await post([score(lossy, 1), score(quiet, 1)])
    await until('the first events applied', async () => {
      const s = await scores()
      return s[lossy] === 1 && s[quiet] === 1
    })
    await workers.stop()

    // Every worker is down: partition 0 gets events acknowledged, partition 1 none.
    const lost = await post([score(lossy, 10), score(lossy, 100)])
    // The API node sees them waiting (the witness), and how old the oldest is.
    const waiting = await until('the unapplied events seen', async () => {
      const [p0] = await partitionsOf('leaderboards')
      return p0.oldestUnappliedAt ?? undefined
    })
    expect(Date.parse(waiting)).toBeGreaterThan(Date.now() - 10_000)
    expect(await apiMetrics.text()).toMatch(/fanfare_projection_oldest_unapplied_age_seconds\{projection="leaderboards",partition="0"\} [0-9.]*[1-9]/)
    // Past the retention the stream holds none of them (nor the applied ones).
    await until('the retention to delete every event', async () => ((await node.streamCount()) === 0 ? true : undefined), 15_000)
    // Past half of it, the API node warned about partition 0 (once), never about partition 1.
    const warnings = apiLog.lines.filter((l) => l.level === 40 && l.component === 'retention')
    expect(warnings.map((l) => [l.projection, l.partition])).toEqual([['leaderboards', 0]])

    // A worker comes back: partition 0's loss is reported, partition 1's aged-out events are not.
    const worker2Log = capturedLogger()
    const worker2Metrics: Metrics = createMetrics()
    workers = await startTestWorker(env, { logger: worker2Log.logger, metrics: worker2Metrics })
    cleanup.push(() => workers.stop())
    const expired = await until('the loss reported on GET /admin/projections', async () => (await partitionsOf('leaderboards'))[0].expired ?? undefined)
    expect(expired.fromSeq).toBeLessThanOrEqual(lost[0])
    expect(expired.toSeq).toBeGreaterThanOrEqual(lost[1])
    expect(Date.parse(expired.at)).toBeGreaterThan(Date.now() - 30_000)

    const errors = worker2Log.lines.filter((l) => l.level === 50)
    expect(errors).toHaveLength(1)
    expect(errors[0]).toMatchObject({ projection: 'leaderboards', partition: 0, fromSeq: expired.fromSeq, toSeq: expired.toSeq })
    expect(errors[0].msg).toContain('deleted by retention')
    expect(await worker2Metrics.text()).toContain('fanfare_projection_expired_unapplied_total{projection="leaderboards"} 1')

    // The partition goes on with new events, reported once; nothing else reported anywhere.
    await post([score(lossy, 1000), score(quiet, 1000)])
    await until('the new events applied', async () => {
      const s = await scores()
      return s[lossy] === 1001 && s[quiet] === 1001 ? true : undefined
    })
    expect(worker2Log.lines.filter((l) => l.level === 50)).toHaveLength(1)
    for (const projection of ['leaderboards', 'chat', 'streams', 'polls', 'reactions', 'matches']) {
      const parts = await partitionsOf(projection)
      const reported = parts.filter((p) => p.expired !== null).map((p) => p.partition)
      expect([projection, reported]).toEqual([projection, projection === 'leaderboards' ? [0] : []])
    }
    expect(workerLog.lines.filter((l) => l.level >= 50)).toEqual([])
    expect(apiLog.lines.filter((l) => l.level >= 50)).toEqual([])
  }, 60_000)

  test('a running worker whose partition stalls past the retention reports what its consumer skipped, before applying past it', async () => {
    const { env, database, nc } = await retentionWorld({ FANFARE_PARTITIONS: '2', FANFARE_EVENT_RETENTION_MS: '2000', FANFARE_DEDUP_WINDOW_MS: '1000', FANFARE_LEASE_TTL_MS: '1500' })
    const js = jetstream(nc)
    await database.db.insert(leaderboards).values({ board: 'tally', sortOrder: 'desc', operator: 'sum' })
    const [lossy] = playersOnPartitions('tally')
    const publish = async (n: number) => {
      const event = storedEvent('score.submitted', { board: 'tally', player: lossy, score: n })
      return (await js.publish(subjects.event(env.config.FANFARE_SUBJECT_PREFIX, 0, event.type), JSON.stringify(event), { msgID: dedupIdOf(event) })).seq
    }

    // The leaderboards runner of partition 0 stalls after its first batch for 4 s (twice the
    // retention): what arrives meanwhile is seen waiting by the worker's own watch, then deleted.
    let stall: Promise<void> | undefined
    const log = capturedLogger()
    const metrics = createMetrics()
    const workers = await startTestWorker(env, {
      logger: log.logger,
      metrics,
      hooks: {
        onBeforeAck: async ({ projection, partition }) => {
          if (projection !== 'leaderboards' || partition !== 0 || stall) return
          stall = Bun.sleep(4_000)
          await stall
        },
      },
    })
    cleanup.push(() => workers.stop())
    await publish(1)
    await until('the runner stalled', () => stall !== undefined)
    const lost = [await publish(10), await publish(100)]
    await stall
    // Only an event after the stall makes the consumer deliver again; the skip is reported before it applies.
    const after = await publish(1000)
    const scores = async () => (await database.db.select().from(leaderboardEntries).where(eq(leaderboardEntries.board, 'tally'))).map((r) => Number(r.score))
    await until('the event after the stall applied', async () => ((await scores())[0] === 1001 ? true : undefined), 15_000)
    const errors = log.lines.filter((l) => l.level === 50)
    expect(errors).toHaveLength(1)
    expect(errors[0]).toMatchObject({ projection: 'leaderboards', partition: 0, nextSeq: after })
    expect(errors[0].fromSeq).toBeLessThanOrEqual(lost[0])
    expect(errors[0].toSeq).toBeGreaterThanOrEqual(lost[1])
    expect(errors[0].toSeq).toBeLessThan(after)
    expect(await metrics.text()).toContain('fanfare_projection_expired_unapplied_total{projection="leaderboards"} 1')
  }, 60_000)

  test('the watch stops at once, not after its sampling interval (10 s with a long retention)', async () => {
    const { env, database, nc } = await retentionWorld({ FANFARE_EVENT_RETENTION_MS: '3600000' }, 2)
    const { logger } = capturedLogger()
    const watch = startRetentionWatch({ config: env.config, db: database.db, nc, logger, metrics: createMetrics(), projections: [{ name: 'leaderboards', area: 'score' }] })
    await Bun.sleep(500)
    const started = performance.now()
    await watch.stop()
    expect(performance.now() - started).toBeLessThan(1_000)
  }, 30_000)
})

