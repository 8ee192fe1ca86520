import { afterAll, describe, expect, test } from 'bun:test'
import { DeliverPolicy, jetstream } from '@nats-io/jetstream'
import postgres from 'postgres'
import { channelOf, type ChangeRun } from '../../core/channels'
import { connectBunSql } from '../../core/db/client'
import { subjects } from '../../core/events'
import { createLogger } from '../../core/logger'
import { connectNats, topology } from '../../core/nats'
import { leaderboardsProjection } from '../../stream-workers/src/projections/leaderboards/apply'
import { runRebuild } from '../../stream-workers/src/rebuild/rebuild'
import { until, type Proc } from '../e2e/harness'
import { configureBoard, postEvents, privateNatsDeployment, readModel, scoreEvent, startNodes, stopCleanly, sumsOf, untilBoardEquals, type PrivateNatsDeployment, type ScoreEvent } from './support'
import { runsOfData } from '../../core/live-batches'

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

  /**
   * A deployment on its own nats-server (an API node and a worker; the one before it stopped), a
   * sum board and 4 lanes x `batches` x 100 scores applied: what each test rebuilds.
   */
  const loaded = async (name: string, overrides: Record<string, string>, batches: number) => {
    await Promise.all(procs.splice(0).map((p) => p.stop('SIGKILL')))
    await d?.close()
    d = await privateNatsDeployment(name, { FANFARE_PARTITIONS: '2', FANFARE_KEY_OPS_PER_SECOND: '10000000', FANFARE_KEY_OPS_BURST: '10000000', ...overrides })
    const { env, api } = d
    const { workerProc } = await startNodes(d, procs)
    const run = Math.random().toString(36).slice(2, 8)
    const board = `sum_${run}`
    await configureBoard(api, board, 'sum')
    const sent: ScoreEvent[] = []
    await Promise.all(
      [0, 1, 2, 3].map(async (lane) => {
        for (let b = 0; b < batches; b++) {
          const batch = Array.from({ length: 100 }, (_, k) => scoreEvent(`${run}-${lane}-${b}-${k}`, board, `p${k % 40}`, 1 + ((b + k) % 7)))
          const res = await postEvents(api, batch)
          expect(res.status).toBe(202)
          sent.push(...batch)
        }
      }),
    )
    const rm = readModel(env.vars.DATABASE_URL)
    closers.push(() => rm.close())
    await untilBoardEquals(rm, board, sumsOf(sent), 60_000)
    return { ...d, board, sent, rm, workerProc }
  }

  test('goes on after the restart and switches in every event once', async () => {
    // More than a catch-up fetch (5,000) so that the rebuild reads again after the restart.
    const { nats, env, board, sent, rm } = await loaded('rebuild-restart', {}, 50)

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

  // Its heartbeats failed while NATS was away, which the worker took for a takeover: it dropped
  // the rebuild, and the job sat unowned until it looked dead, then started again from scratch.
  test('its worker keeps the job through the outage: done at the first attempt', async () => {
    const { nats, api, board, sent, rm, workerProc } = await loaded('rebuild-restart-job', { FANFARE_LEASE_TTL_MS: '1500' }, 150)

    const admin = { authorization: `Bearer ${api.adminToken}` }
    const url = `${api.baseUrl}/admin/projections/leaderboards/rebuild`
    expect((await fetch(url, { method: 'POST', headers: admin })).status).toBe(202)
    const job = async () => (await fetch(url, { headers: admin })).json() as Promise<{ state: string; attempts: number; appliedSeq: number }>
    await until('the rebuild running', async () => {
      const j = await job()
      return j.state === 'running' && j.appliedSeq > 0
    }, 30_000, 20)
    // Longer than a heartbeat period (TTL/3), shorter than a takeover's wait (3 TTLs, 5 s at least).
    await nats.stop()
    await Bun.sleep(2000)
    await nats.start()
    const done = await until('the rebuild finished', async () => {
      const j = await job().catch(() => undefined)
      return j?.state === 'done' || j?.state === 'failed' ? j : undefined
    }, 60_000, 100)
    expect(done, workerProc.output().slice(-3000)).toMatchObject({ state: 'done', attempts: 1 })
    await untilBoardEquals(rm, board, sumsOf(sent), 10_000)
    await stopCleanly(...procs)
  }, 180_000)

  // The switch reads NATS inside its transaction (the stream's identity, the last events): a
  // restart there failed the job, nothing switched, and the admin had to request it again.
  test('a restart inside the switch: the switch waits for NATS and commits once, the job is done at its first attempt, the channel told to re-sync once', async () => {
    const { nats, env, api, board, sent, rm, workerProc } = await loaded('rebuild-restart-switch', {}, 20)
    // The switch takes the live table exclusively first: a reader's share lock holds it there,
    // inside its transaction, until NATS is down.
    const pg = postgres(env.vars.DATABASE_URL, { max: 2, onnotice: () => {} })
    closers.push(() => pg.end({ timeout: 5 }))
    let release!: () => void
    const released = new Promise<void>((resolve) => (release = resolve))
    const reader = pg.begin(async (tx) => {
      await tx`lock table leaderboard_entries in access share mode`
      await released
    })
    const admin = { authorization: `Bearer ${api.adminToken}` }
    const url = `${api.baseUrl}/admin/projections/leaderboards/rebuild`
    expect((await fetch(url, { method: 'POST', headers: admin })).status).toBe(202)
    await until('the switch waiting for the live table', async () => {
      const [{ n }] = await pg`select count(*)::int as n from pg_locks l join pg_class c on c.oid = l.relation
                               where c.relname = 'leaderboard_entries' and l.mode = 'AccessExclusiveLock' and not l.granted`
      return n > 0
    }, 60_000, 50)
    await nats.stop()
    release()
    await reader
    await Bun.sleep(2000)
    await nats.start()
    const job = async () => (await fetch(url, { headers: admin })).json() as Promise<{ state: string; attempts: number; error?: string }>
    const done = await until('the rebuild finished', async () => {
      const j = await job().catch(() => undefined)
      return j?.state === 'done' || j?.state === 'failed' ? j : undefined
    }, 90_000, 100)
    expect(done, workerProc.output().slice(-3000)).toMatchObject({ state: 'done', attempts: 1 })
    // It did meet NATS away inside the switch, and rolled it back.
    expect(workerProc.output()).toContain('the switch failed and was rolled back')
    await untilBoardEquals(rm, board, sumsOf(sent), 10_000)
    // Every rebuilt channel gets exactly one restart run from the switch (more would mean it
    // switched, or wrote its runs, twice).
    const nc = await connectNats(nats.url, 'rebuild-restart-switch-test')
    closers.push(() => nc.close())
    const channel = channelOf.leaderboard(board)
    const restarts = async () => {
      const c = await jetstream(nc).consumers.get(topology(env.config).changeStreams.leaderboard, { filter_subjects: subjects.change(env.config.FANFARE_SUBJECT_PREFIX, channel), deliver_policy: DeliverPolicy.All })
      const runs: ChangeRun[] = []
      for await (const m of await c.fetch({ max_messages: 1000, expires: 1000 })) runs.push(...runsOfData(m.data))
      return runs.filter((r) => r.restart === 'read model rebuilt').length
    }
    await until('the restart run published', async () => (await restarts()) > 0, 20_000, 200)
    await Bun.sleep(3000)
    expect(await restarts()).toBe(1)
    await stopCleanly(...procs)
  }, 240_000)
})
