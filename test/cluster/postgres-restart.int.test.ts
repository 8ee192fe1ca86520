import { afterAll, describe, expect, test } from 'bun:test'
import { until, type Proc } from '../e2e/harness'
import { privatePostgresUnavailable } from './private-postgres'
import { configureBoard, expectAppliedOnce, postEvents, privatePostgresDeployment, readModel, scoreEvent, startNodes, stopCleanly, type PrivatePostgresDeployment, type ScoreEvent } from './support'

const PLAYERS = 40
const unavailable = privatePostgresUnavailable()
if (unavailable) console.warn(`postgres restart test skipped: ${unavailable}`)

/**
 * A real Postgres restart (its own throwaway cluster) while a worker projects: the worker retries
 * through the outage, and afterwards nothing is lost and nothing applied twice.
 */
describe.skipIf(Boolean(unavailable))('Postgres restart during projection', () => {
  let d: PrivatePostgresDeployment | undefined
  const procs: Proc[] = []
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop('SIGKILL')))
    await d?.close()
  })

  test('the worker survives; every event applied exactly once', async () => {
    // Unique streams on the machine's NATS; the database is the private cluster's.
    d = await privatePostgresDeployment({ FANFARE_PARTITIONS: '4', FANFARE_LEASE_TTL_MS: '2000', FANFARE_BATCH_SIZE: '50' })
    const { pg, databaseUrl, api } = d
    await startNodes(d, procs)
    const run = Math.random().toString(36).slice(2, 8)
    const board = `sum_${run}`
    await configureBoard(api, board, 'sum')

    const rm = readModel(databaseUrl)
    const sent: ScoreEvent[] = []
    let n = 0
    let sending = true
    // Ingest needs only NATS: it goes on through the Postgres outage.
    const lane = async () => {
      while (sending) {
        const batch = Array.from({ length: PLAYERS }, (_, p) => {
          const i = n++
          return scoreEvent(`${run}-${i}`, board, `p${p}`, 1 + (i % 5))
        })
        const res = await postEvents(api, batch, 10_000)
        if (res.status !== 202) throw new Error(`POST /v1/events: ${res.status} ${JSON.stringify(res.body)}`)
        sent.push(...batch)
        await Bun.sleep(100)
      }
    }
    const lanes = Promise.all([lane(), lane()])
    try {
      await until('projection under way', async () => (await rm.version(`leaderboard:${board}`)) > 200, 30_000, 100)
      await pg.stop()
      await Bun.sleep(3000)
      await pg.start()
      const before = await until('Postgres back', () => rm.version(`leaderboard:${board}`), 10_000, 100)
      await until('projection resumed', async () => (await rm.version(`leaderboard:${board}`)) > before, 30_000, 200)
      await Bun.sleep(2000)
    } finally {
      sending = false
      await lanes
    }

    try {
      await expectAppliedOnce(rm, board, sent, 45_000)
    } finally {
      await rm.close()
    }
    await stopCleanly(...procs)
    const retried = procs[1].output().split('\n').filter((l) => /retry|reset|transient/i.test(l)).length
    console.log(`postgres restart: ${sent.length} events applied once; worker logged ${retried} retries`)
  }, 120_000)
})
