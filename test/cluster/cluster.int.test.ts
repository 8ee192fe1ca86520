import { afterAll, describe, expect, test } from 'bun:test'
import type { ProjectionsStatus } from '../../core/projections'
import { createTestEnv, type TestEnv } from '../../core/testing/env'
import { freePort, spawnProc, until, waitReady, type Proc } from '../e2e/harness'
import { apiAt, expectReadModelsMatch, ingestRounds, readModel, stopCleanly } from './support'

const PLAYERS = 520
const ROUNDS = 20
const BATCH = 200
/** Requests in flight at once, spread over both API nodes. */
const IN_FLIGHT = 6

/**
 * Two API nodes and three worker processes on the machine's Postgres and NATS. Every key gets an
 * increasing sequence of events through both nodes while one worker is SIGKILLed and restarted
 * and another is stopped with SIGTERM. The `latest` board catches reordering (the final value is
 * the last event sent), the `sum` board and the channel versions catch double application.
 */
describe('cluster: 2 api nodes, 3 workers, a crash and a graceful stop during ingest', () => {
  let env: TestEnv | undefined
  const procs: Proc[] = []
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop('SIGKILL')))
    await env?.cleanup()
  })

  test('read models equal the oracle of acknowledged events; nothing reordered or applied twice', async () => {
    env = await createTestEnv({ FANFARE_PARTITIONS: '12', FANFARE_LEASE_TTL_MS: '2000', LOG_LEVEL: 'warn' })
    const ports = [freePort(), freePort()]
    const vars = env.vars
    const apis = ports.map((port) => apiAt(port, vars))
    const apiProcs = ports.map((port, i) => spawnProc(`api-${i + 1}`, 'api/src/main.ts', { ...vars, PORT: String(port), HOST: '127.0.0.1' }))
    const worker = (name: string) => spawnProc(name, 'stream-workers/src/main.ts', vars)
    const workers = [worker('worker-1'), worker('worker-2'), worker('worker-3')]
    procs.push(...apiProcs, ...workers)
    for (const api of apis) await waitReady(api.baseUrl, procs)

    const run = Math.random().toString(36).slice(2, 8)
    let restarted: Proc | undefined
    const t0 = Date.now()
    const oracle = await ingestRounds({
      apis,
      run,
      players: PLAYERS,
      more: (r) => r < ROUNDS,
      batch: BATCH,
      inFlight: IN_FLIGHT,
      // Faults while events flow and while workers are behind.
      beforeRound: async (r) => {
        if (r === 4) workers[0].proc.kill('SIGKILL')
        if (r === 9) {
          restarted = worker('worker-1b')
          procs.push(restarted)
        }
        if (r === 13) await stopCleanly(workers[1])
      },
    })
    expect(oracle.applied.get(oracle.latestBoard)! + oracle.applied.get(oracle.sumBoard)!).toBe(PLAYERS * ROUNDS * 2)

    const ingestMs = Date.now() - t0
    const rm = readModel(vars.DATABASE_URL)
    try {
      await expectReadModelsMatch(rm, oracle, 75_000)
      console.log(`cluster: ${PLAYERS * ROUNDS * 2} events over ${PLAYERS * 2} keys acknowledged in ${ingestMs} ms, read models equal the oracle ${Date.now() - t0 - ingestMs} ms later; ${oracle.unavailable} requests answered 503 and resent`)
      const status = await until('projections caught up', async () => {
        const res = await fetch(`${apis[1].baseUrl}/admin/projections`, { headers: { authorization: `Bearer ${vars.FANFARE_ADMIN_TOKEN}` } })
        const body = (await res.json()) as ProjectionsStatus
        return body.projections.every((p) => p.lag === 0) ? body : undefined
      }, 10_000, 200)
      // Only score events were sent: the leaderboards projection has applied the stream to its end.
      expect(status.projections.find((p) => p.projection === 'leaderboards')!.appliedSeq).toBe(status.stream.lastSeq)
    } finally {
      await rm.close()
    }

    await stopCleanly(...apiProcs, workers[2], restarted!)
  }, 120_000)
})
