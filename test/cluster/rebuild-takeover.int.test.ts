import { afterAll, describe, expect, test } from 'bun:test'
import { DeliverPolicy, jetstream } from '@nats-io/jetstream'
import postgres from 'postgres'
import { channelOf } from '../../core/channels'
import { connectNats, topology } from '../../core/nats'
import { createTestEnv, type TestEnv } from '../../core/testing/env'
import { spawnProc, until, waitReady, type Proc } from '../e2e/harness'
import { configureBoard, nodeVars, postEvents, readModel, scoreEvent, stopCleanly, sumsOf, untilBoardEquals, type ScoreEvent } from './support'
import { runsOfData } from '../../core/live-batches'

/**
 * A rebuild's worker that died after its switch committed, before the job was saved `done`: the
 * takeover started the job from scratch and switched a second time (a second full rebuild, and
 * every channel told to re-sync twice). It finds the committed switch and marks the job done.
 */
describe('a rebuild whose worker dies right after the switch committed', () => {
  let env: TestEnv | undefined
  const procs: Proc[] = []
  const closers: (() => Promise<unknown>)[] = []
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop('SIGKILL')))
    for (const close of closers) await close().catch(() => {})
    await env?.cleanup()
  })

  test('is taken over and marked done without switching again: each channel told to re-sync once, the model equal to the events', async () => {
    env = await createTestEnv({ FANFARE_PARTITIONS: '2', FANFARE_LEASE_TTL_MS: '1500', FANFARE_KEY_OPS_PER_SECOND: '10000000', FANFARE_KEY_OPS_BURST: '10000000' })
    const { vars, api } = nodeVars(env.vars)
    const apiProc = spawnProc('api', 'api/src/main.ts', vars)
    // The first worker kills itself (SIGKILL) once its rebuild's switch committed (see process.ts).
    // At info, each worker logs its switch ('rebuilt model switched in').
    const dying = spawnProc('worker-a', 'stream-workers/src/main.ts', { ...vars, LOG_LEVEL: 'info', FANFARE_TEST_CRASH_AT: 'rebuild-switched' })
    procs.push(apiProc, dying)
    await waitReady(api.baseUrl, procs)
    const run = Math.random().toString(36).slice(2, 8)
    const boards = [`a_${run}`, `b_${run}`]
    for (const board of boards) await configureBoard(api, board, 'sum')
    const sent: ScoreEvent[] = []
    const send = async (tag: string, n: number) => {
      const batch = Array.from({ length: n }, (_, k) => scoreEvent(`${run}-${tag}-${k}`, boards[k % 2], `p${k % 30}`, 1 + (k % 7)))
      expect((await postEvents(api, batch)).status).toBe(202)
      sent.push(...batch)
    }
    for (let b = 0; b < 5; b++) await send(`b${b}`, 100)
    const rm = readModel(env.vars.DATABASE_URL)
    closers.push(() => rm.close())
    const oracle = (board: string) => sumsOf(sent.filter((e) => e.data.board === board))
    for (const board of boards) await untilBoardEquals(rm, board, oracle(board), 60_000)

    const admin = { authorization: `Bearer ${api.adminToken}` }
    const url = `${api.baseUrl}/admin/projections/leaderboards/rebuild`
    expect((await fetch(url, { method: 'POST', headers: admin })).status).toBe(202)
    // It switched, then died before saving the job done.
    const code = await Promise.race([dying.proc.exited, Bun.sleep(60_000).then(() => 'still running')])
    expect(code, dying.output().slice(-3000)).not.toBe('still running')
    expect(dying.output()).toContain('rebuilt model switched in')
    expect(dying.output()).toContain('dying after the switch')
    const job = async () => (await fetch(url, { headers: admin })).json() as Promise<{ state: string; attempts: number; owner?: string; error?: string }>
    expect(await job()).toMatchObject({ state: 'switching', attempts: 1 })

    // Another worker takes the job over once its heartbeat looks dead (3 TTLs, 5 s at least).
    const taker = spawnProc('worker-b', 'stream-workers/src/main.ts', { ...vars, LOG_LEVEL: 'info' })
    procs.push(taker)
    const done = await until('the rebuild finished', async () => {
      const j = await job().catch(() => undefined)
      return j?.state === 'done' || j?.state === 'failed' ? j : undefined
    }, 60_000, 100)
    expect(done, taker.output().slice(-3000)).toMatchObject({ state: 'done', attempts: 2 })

    // Live goes on on the rebuilt tables.
    await send('after', 100)
    for (const board of boards) await untilBoardEquals(rm, board, oracle(board), 30_000)

    // Exactly one restart run per channel on the change stream (two: it switched twice).
    const nc = await connectNats(env.vars.NATS_URL, 'rebuild-takeover-test')
    closers.push(() => nc.close())
    const restarts = async () => {
      const c = await jetstream(nc).consumers.get(topology(env!.config).changeStreams.leaderboard, { deliver_policy: DeliverPolicy.All })
      const runs: string[] = []
      for await (const m of await c.fetch({ max_messages: 10_000, expires: 1000 })) {
        for (const r of runsOfData(m.data)) if (r.restart === 'read model rebuilt') runs.push(r.channel)
      }
      return runs.sort()
    }
    const channels = boards.map((b) => channelOf.leaderboard(b)).sort()
    await until('the restart runs published', async () => (await restarts()).length >= channels.length, 20_000, 200)
    // The outbox sweeper's pass (every 2 s) would have published a second switch's by now.
    await Bun.sleep(3000)
    expect(await restarts()).toEqual(channels)
    expect(taker.output()).not.toContain('rebuilt model switched in')

    // The retired tables were kept until the job was done, then dropped.
    const pg = postgres(env.vars.DATABASE_URL, { max: 1, onnotice: () => {} })
    closers.push(() => pg.end({ timeout: 5 }))
    const left = await pg`select nspname from pg_namespace where nspname like 'rebuild\\_%' or nspname like 'retired\\_%'`
    expect(left.map((r) => r.nspname)).toEqual([])
    await stopCleanly(apiProc, taker)
  }, 180_000)
})
