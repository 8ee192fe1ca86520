import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, test } from 'bun:test'
import { until, type Proc } from '../e2e/harness'
import { configureBoard, expectAppliedOnce, postEvents, privateNatsDeployment, readModel, scoreEvent, startNodes, stopCleanly, type PrivateNatsDeployment, type ScoreEvent } from './support'

const PLAYERS = 40

/**
 * A NATS restart while events flow: requests during the outage get 503 `unavailable` (never a
 * 202, never a hang), and every event acknowledged with 202 (after the restart, resends of the
 * refused batches with the same ids) is applied exactly once; batches acknowledged before it and
 * resent after it are duplicates.
 */
describe('NATS restart during ingest', () => {
  let d: PrivateNatsDeployment | undefined
  const procs: Proc[] = []
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop('SIGKILL')))
    await d?.close()
  })

  test('503 during the outage, every acknowledged event applied once after it', async () => {
    // Its lanes send as fast as the node answers (past 10,000 events/s on a fast machine): the
    // key's rate limit (README, Limits) is not what this test is about.
    d = await privateNatsDeployment('nats-restart', {
      FANFARE_PARTITIONS: '4',
      FANFARE_LEASE_TTL_MS: '2000',
      FANFARE_KEY_OPS_PER_SECOND: '10000000',
      FANFARE_KEY_OPS_BURST: '10000000',
    })
    const { nats, env, api } = d
    // Debug: a runner's pulls that end early are logged at debug, the evidence of the stall this
    // test found (bench/findings.md, 2026-11-30, "A worker crawling after a NATS restart").
    const { workerProc } = await startNodes(d, procs, { worker: { LOG_LEVEL: 'debug' } })
    const run = Math.random().toString(36).slice(2, 8)
    const board = `sum_${run}`
    await configureBoard(api, board, 'sum')

    type Outcome = { batch: ScoreEvent[]; status: number; code?: string; results?: { id: string; seq: number; duplicate: boolean }[]; startedAt: number; endedAt: number }
    const outcomes: Outcome[] = []
    let n = 0
    let sending = true
    const makeBatch = () =>
      Array.from({ length: PLAYERS }, (_, p) => {
        const i = n++
        return scoreEvent(`${run}-${i}`, board, `p${p}`, 1 + (i % 7))
      })
    const send = async () => {
      const batch = makeBatch()
      const startedAt = Date.now()
      // The API gives up on JetStream after 5 s (publishTimeoutMs); 10 s without an answer is a hang.
      const res = await postEvents(api, batch, 10_000)
      outcomes.push({ batch, status: res.status, code: res.body?.error?.code, results: res.status === 202 ? res.body.results : undefined, startedAt, endedAt: Date.now() })
      return res.status
    }
    const lane = async () => {
      while (sending) if ((await send()) !== 202) await Bun.sleep(50)
    }
    const lanes = Promise.all([lane(), lane()])

    await until('some events acknowledged', () => outcomes.filter((o) => o.status === 202).length >= 20, 20_000)
    await nats.stop()
    const downAt = Date.now()
    // New requests keep coming during the outage, not only the lanes' stuck ones. The outage is
    // longer than the API's publish timeout, so some requests are answered while it lasts.
    const probes: Promise<number>[] = []
    while (Date.now() - downAt < 7000) {
      probes.push(send())
      await Bun.sleep(500)
    }
    const upAt = Date.now()
    await nats.start()
    await until('acknowledgements after the restart', () => outcomes.some((o) => o.status === 202 && o.startedAt > upAt), 30_000, 100)
    await Bun.sleep(2000)
    sending = false
    await Promise.all([lanes, ...probes])

    const statuses: Record<string, number> = {}
    for (const o of outcomes) {
      const label = o.status === 202 ? '202' : `${o.status} ${o.code}`
      statuses[label] = (statuses[label] ?? 0) + 1
    }
    // Only 202 and 503 `unavailable`: no timeout, no other error.
    for (const o of outcomes) {
      if (o.status !== 202) expect(`${o.status} ${o.code}`).toBe('503 unavailable')
    }
    // Nothing can be acknowledged while the server is down: every request made after it exited and
    // answered before it was back is a 503. (A request made just before may still carry a true 202:
    // its event was stored before the server stopped.)
    const answeredDuring = outcomes.filter((o) => o.startedAt >= downAt && o.endedAt < upAt)
    expect(answeredDuring.length).toBeGreaterThan(0)
    expect(answeredDuring.filter((o) => o.status !== 503)).toEqual([])
    expect(statuses['503 unavailable']).toBeGreaterThan(0)

    // The refused batches, resent with the same ids, are acknowledged now; events of them that
    // JetStream had stored already are reported duplicate and must not be applied again.
    let storedDespite503 = 0
    for (const o of outcomes.filter((o) => o.status !== 202)) {
      const res = await until('resend acknowledged', async () => {
        const r = await postEvents(api, o.batch, 10_000)
        return r.status === 202 ? r : undefined
      }, 20_000, 200)
      expect(res.body.results).toHaveLength(o.batch.length)
      storedDespite503 += res.body.results.filter((r: { duplicate: boolean }) => r.duplicate).length
    }

    // Batches acknowledged before the outage, resent after it (well within the window): the
    // restarted server still knows their ids, so each is reported duplicate with its first sequence.
    const ackedBefore = outcomes.filter((o) => o.status === 202 && o.endedAt < downAt).slice(-3)
    expect(ackedBefore.length).toBeGreaterThan(0)
    for (const o of ackedBefore) {
      const res = await postEvents(api, o.batch, 10_000)
      expect(res.status).toBe(202)
      expect(res.body.results).toEqual(o.results!.map((r) => ({ ...r, duplicate: true })))
    }

    const acked = outcomes.flatMap((o) => o.batch)
    const total = acked.length
    const rm = readModel(env.vars.DATABASE_URL)
    try {
      await expectAppliedOnce(rm, board, acked, 45_000, workerProc).catch((err) => {
        // The whole logs, the private nats-server's too (a readloop stall, a slow consumer), kept for a look.
        const logs = mkdtempSync(join(tmpdir(), 'fanfare-nats-restart-logs-'))
        for (const p of procs) writeFileSync(join(logs, `${p.name}.log`), p.output())
        writeFileSync(join(logs, 'nats-server.log'), nats.log())
        throw new Error(`${(err as Error).message}\nlogs: ${logs}`)
      })
    } finally {
      await rm.close()
    }
    await stopCleanly(...procs)
    console.log(`nats restart: ${outcomes.length} requests, ${total} events, outcomes ${JSON.stringify(statuses)}, ${storedDespite503} events of refused requests had been stored (resends de-duplicated)`)
  }, 120_000)
})
