import { afterAll, describe, expect, test } from 'bun:test'
import type { ProjectionsStatus } from '../../core/projections'
import { createTestEnv, type TestEnv } from '../../core/testing/env'
import { freePort, spawnProc, until, waitReady, type Proc } from '../e2e/harness'
import { configureBoard, postEvents, readModel, scoreEvent, untilBoardEquals, type Api, type ScoreEvent, stopCleanly } from './support'

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
    const apis: Api[] = ports.map((port) => ({
      baseUrl: `http://127.0.0.1:${port}`,
      ingestToken: env!.vars.FANFARE_INGEST_TOKEN,
      adminToken: env!.vars.FANFARE_ADMIN_TOKEN,
    }))
    const vars = env.vars
    const apiProcs = ports.map((port, i) => spawnProc(`api-${i + 1}`, 'api/src/main.ts', { ...vars, PORT: String(port), HOST: '127.0.0.1' }))
    const worker = (name: string) => spawnProc(name, 'stream-workers/src/main.ts', vars)
    const workers = [worker('worker-1'), worker('worker-2'), worker('worker-3')]
    procs.push(...apiProcs, ...workers)
    for (const api of apis) await waitReady(api.baseUrl, procs)

    const run = Math.random().toString(36).slice(2, 8)
    const latestBoard = `latest_${run}`
    const sumBoard = `sum_${run}`
    await configureBoard(apis[0], latestBoard, 'latest')
    await configureBoard(apis[1], sumBoard, 'sum')

    // Scores vary per round (not monotone), so an out-of-order apply leaves a wrong final value.
    const scoreOf = (p: number, r: number) => 1 + ((p * 7919 + r * 104_729) % 1000)
    const latest = new Map<string, number>()
    const sum = new Map<string, number>()
    const applied = new Map<string, number>([[latestBoard, 0], [sumBoard, 0]])
    let requests = 0
    let unavailable = 0
    let restarted: Proc | undefined

    const t0 = Date.now()
    for (let r = 0; r < ROUNDS; r++) {
      // Faults while events flow and while workers are behind.
      if (r === 4) workers[0].proc.kill('SIGKILL')
      if (r === 9) {
        restarted = worker('worker-1b')
        procs.push(restarted)
      }
      if (r === 13) {
        await stopCleanly(workers[1])
      }

      const events: ScoreEvent[] = []
      for (let p = 0; p < PLAYERS; p++) {
        const player = `p${p}`
        const score = scoreOf(p, r)
        events.push(scoreEvent(`${run}-l-${p}-${r}`, latestBoard, player, score))
        events.push(scoreEvent(`${run}-s-${p}-${r}`, sumBoard, player, score))
      }
      const batches: ScoreEvent[][] = []
      for (let i = 0; i < events.length; i += BATCH) batches.push(events.slice(i, i + BATCH))
      // One round in flight at a time: a key's next event is sent only after its previous one was
      // acknowledged, so "the last event sent" is well defined even across the two nodes.
      let next = 0
      const lane = async () => {
        while (next < batches.length) {
          const batch = batches[next++]
          const api = apis[requests++ % apis.length]
          // A 503 `unavailable` is an honest answer (e.g. the node's NATS connection blipped on a
          // loaded machine); clients resend the same ids, which JetStream de-duplicates.
          let res = await postEvents(api, batch, 30_000)
          let resends = 0
          while (res.status === 503 && res.body?.error?.code === 'unavailable' && resends < 10) {
            resends++
            unavailable++
            await Bun.sleep(250)
            res = await postEvents(api, batch, 30_000)
          }
          if (res.status !== 202) throw new Error(`POST ${api.baseUrl}/v1/events: ${res.status} ${JSON.stringify(res.body)}`)
          expect(res.body.results).toHaveLength(batch.length)
          for (const [i, e] of batch.entries()) {
            // Only acknowledged events go into the oracle. A resend may find some already stored.
            if (res.body.results[i].duplicate && resends === 0) throw new Error(`fresh event ${e.id} reported duplicate`)
            const { board, player, score } = e.data
            if (board === latestBoard) latest.set(player, score)
            else sum.set(player, (sum.get(player) ?? 0) + score)
            applied.set(board, applied.get(board)! + 1)
          }
        }
      }
      await Promise.all(Array.from({ length: IN_FLIGHT }, lane))
    }
    expect(applied.get(latestBoard)! + applied.get(sumBoard)!).toBe(PLAYERS * ROUNDS * 2)

    const ingestMs = Date.now() - t0
    const rm = readModel(vars.DATABASE_URL)
    try {
      await untilBoardEquals(rm, latestBoard, latest, 75_000)
      await untilBoardEquals(rm, sumBoard, sum, 30_000)
      console.log(`cluster: ${PLAYERS * ROUNDS * 2} events over ${PLAYERS * 2} keys acknowledged in ${ingestMs} ms, read models equal the oracle ${Date.now() - t0 - ingestMs} ms later; ${unavailable} requests answered 503 and resent`)
      // Every event of these boards is one change (latest always replaces; sum adds a non-zero
      // score), so each channel's version counts applications: equal means none applied twice.
      expect(await rm.version(`leaderboard:${latestBoard}`)).toBe(applied.get(latestBoard)!)
      expect(await rm.version(`leaderboard:${sumBoard}`)).toBe(applied.get(sumBoard)!)
      expect(await rm.deadLetters()).toBe(0)
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
