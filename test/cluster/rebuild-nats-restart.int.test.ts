import { afterAll, describe, expect, test } from 'bun:test'
import { jetstream } from '@nats-io/jetstream'
import { connectBunSql } from '../../core/db/client'
import { createLogger } from '../../core/logger'
import { connectNats } from '../../core/nats'
import { leaderboardsProjection } from '../../stream-workers/src/projections/leaderboards/apply'
import { runRebuild } from '../../stream-workers/src/rebuild/rebuild'
import { spawnProc, waitReady, type Proc } from '../e2e/harness'
import { configureBoard, postEvents, privateNatsDeployment, readModel, scoreEvent, stopCleanly, sumsOf, untilBoardEquals, type PrivateNatsDeployment, type ScoreEvent } from './support'

/**
 * A rebuild reads the event stream with a consumer that lives in nats-server's memory: a NATS
 * restart while it caught up (a routine one, SIGTERM) failed the rebuild with "consumer not found",
 * and the operator had to request it again. It reads on after the last event its shadow applied.
 */
describe('a rebuild across a NATS restart', () => {
  let d: PrivateNatsDeployment | undefined
  const procs: Proc[] = []
  const closers: (() => Promise<unknown>)[] = []
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop('SIGKILL')))
    for (const close of closers) await close().catch(() => {})
    await d?.close()
  })

  test('goes on after the restart and switches in every event once', async () => {
    d = await privateNatsDeployment('rebuild-restart', { FANFARE_PARTITIONS: '2', FANFARE_KEY_OPS_PER_SECOND: '10000000', FANFARE_KEY_OPS_BURST: '10000000' })
    const { nats, env, vars, api } = d
    const apiProc = spawnProc('api', 'api/src/main.ts', vars)
    const workerProc = spawnProc('worker', 'stream-workers/src/main.ts', vars)
    procs.push(apiProc, workerProc)
    await waitReady(api.baseUrl, procs)
    const run = Math.random().toString(36).slice(2, 8)
    const board = `sum_${run}`
    await configureBoard(api, board, 'sum')
    // More than a catch-up fetch (5,000) so that the rebuild reads again after the restart.
    const sent: ScoreEvent[] = []
    await Promise.all(
      [0, 1, 2, 3].map(async (lane) => {
        for (let b = 0; b < 50; b++) {
          const batch = Array.from({ length: 100 }, (_, k) => scoreEvent(`${run}-${lane}-${b}-${k}`, board, `p${k % 40}`, 1 + ((b + k) % 7)))
          const res = await postEvents(api, batch)
          expect(res.status).toBe(202)
          sent.push(...batch)
        }
      }),
    )
    const rm = readModel(env.vars.DATABASE_URL)
    closers.push(() => rm.close())
    await untilBoardEquals(rm, board, sumsOf(sent), 45_000)

    const nc = await connectNats(nats.url, 'rebuild-restart-test')
    closers.push(() => nc.close())
    const db = await connectBunSql(env.vars.DATABASE_URL, { max: 2 })
    closers.push(() => db.close())
    let restarts = 0
    const { switchedAtSeq } = await runRebuild(
      {
        config: env.config,
        db: db.db,
        js: jetstream(nc),
        logger: createLogger('silent'),
        projection: leaderboardsProjection,
        progress: async (p) => {
          if (restarts > 0 || p.pending === 0) return
          restarts++
          await nats.stop()
          await nats.start()
        },
        signal: new AbortController().signal,
      },
      { id: 'restart', attempt: 1 },
    )
    expect(restarts).toBe(1)
    expect(switchedAtSeq).toBeGreaterThanOrEqual(sent.length)
    await untilBoardEquals(rm, board, sumsOf(sent), 10_000)
    await stopCleanly(...procs)
  }, 120_000)
})
