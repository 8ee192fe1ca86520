import { afterAll, describe, expect, test } from 'bun:test'
import { createTestEnv, type TestEnv } from '../../core/testing/env'
import { proxyDatabase, type TcpProxy } from '../../core/testing/tcp-proxy'
import { freePort, spawnProc, until, waitReady, type Proc } from '../e2e/harness'
import { apiAt, configureBoard, configuredVersion, postEvents, readModel, scoreEvent, stopCleanly, sumsOf, untilBoardEquals, type ScoreEvent } from './support'

const PARTITIONS = 4
/**
 * From the stall to the healthy worker holding every partition: the watch notices within a ping
 * and FANFARE_DATABASE_TIMEOUT_MS (2 s here), the worker gives its partitions up 2 timeouts later,
 * its runners stop (a retry's connect may take a timeout) and the other takes them at its next
 * scan (TTL/3); on a loaded 2-core machine.
 */
const TAKEN_OVER_WITHIN_MS = 25_000

/** The worker id a worker logs with each line. */
const workerIdOf = (p: Proc) => p.output().match(/"workerId":"([^"]+)"/)?.[1]
const count = (p: Proc, msg: string) => p.output().split('\n').filter((l) => l.includes(`"msg":"${msg}"`)).length

/**
 * Two workers, one of which loses its path to Postgres (a stalled tcp proxy: nothing arrives,
 * nothing is reset) while keeping NATS. It used to keep its leases: its partitions were applied
 * by no one until the path came back, though the other worker could apply them. Now it gives them
 * up, the healthy worker applies every partition while the path is down, the first takes its share
 * again once Postgres answers, and every event is applied exactly once and in order through both
 * hand-overs (late statements of the stalled worker reach Postgres when the path comes back).
 */
describe('a worker that loses Postgres but not NATS', () => {
  let env: TestEnv | undefined
  let proxy: TcpProxy | undefined
  const procs: Proc[] = []
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop('SIGKILL')))
    proxy?.close()
    await env?.cleanup()
  })

  test('gives its partitions to a healthy worker, takes its share back when Postgres answers', async () => {
    env = await createTestEnv({ FANFARE_PARTITIONS: String(PARTITIONS), FANFARE_LEASE_TTL_MS: '2000', FANFARE_DATABASE_TIMEOUT_MS: '2000' })
    const proxied = proxyDatabase(env.vars.DATABASE_URL)
    proxy = proxied.proxy
    const apiPort = freePort()
    const base = { ...env.vars, HOST: '127.0.0.1', LOG_LEVEL: 'info', FANFARE_LOG_FORMAT: 'json' }
    const api = apiAt(apiPort, base)
    procs.push(spawnProc('api', 'api/src/main.ts', { ...base, PORT: String(apiPort) }))
    await waitReady(api.baseUrl, procs)
    // The stalled-to-be worker first, so that it holds partitions (all, until the other joins).
    const cut = spawnProc('cut-off', 'stream-workers/src/main.ts', { ...base, DATABASE_URL: proxied.url, FANFARE_METRICS_PORT: String(freePort()) })
    procs.push(cut)
    await until('the first worker holds every partition', () => count(cut, 'partition acquired') >= PARTITIONS, 30_000, 100)
    const healthy = spawnProc('healthy', 'stream-workers/src/main.ts', { ...base, FANFARE_METRICS_PORT: String(freePort()) })
    procs.push(healthy)
    await until('the second worker holds partitions', () => count(healthy, 'partition acquired') >= 1, 30_000, 100)
    const owners = async () => {
      const res = await fetch(`${api.baseUrl}/admin/workers`, { headers: { authorization: `Bearer ${api.adminToken}` } })
      const body = (await res.json()) as { workers: { id: string; partitions: number[] }[] }
      return new Map(body.workers.map((w) => [w.id, w.partitions]))
    }
    await until('both workers hold partitions', async () => [...(await owners()).values()].filter((ps) => ps.length > 0).length === 2, 30_000, 200)

    const boards = Array.from({ length: 6 }, (_, i) => `lease_${i}_${Math.random().toString(36).slice(2, 8)}`)
    for (const b of boards) await configureBoard(api, b, 'sum')
    const rm = readModel(env.vars.DATABASE_URL)
    const sent: ScoreEvent[] = []
    let n = 0
    /** Sends a batch for every board every 100 ms until the returned function is called (it resolves when the lane ended). */
    const startLane = () => {
      let sending = true
      const lane = (async () => {
        while (sending) {
          const batch = boards.flatMap((b) => Array.from({ length: 3 }, (_, p) => scoreEvent(`${b}-${n++}`, b, `p${p}`, 1 + (n % 7))))
          const res = await postEvents(api, batch)
          if (res.status !== 202) throw new Error(`POST /v1/events: ${res.status} ${JSON.stringify(res.body)}`)
          sent.push(...batch)
          await Bun.sleep(100)
        }
      })()
      return () => {
        sending = false
        return lane
      }
    }
    let stopLane = startLane()
    const untilAllEqual = async (timeoutMs: number) => {
      const upTo = [...sent]
      for (const b of boards) {
        const mine = upTo.filter((e) => e.data.board === b)
        await untilBoardEquals(rm, b, sumsOf(mine), timeoutMs)
        expect(await rm.version(`leaderboard:${b}`)).toBe(configuredVersion(mine.length))
      }
    }
    try {
      await Bun.sleep(2000)
      const healthyId = workerIdOf(healthy)!
      const cutId = workerIdOf(cut)!
      expect(healthyId).toBeDefined()

      const stalledAt = Date.now()
      proxy.stall()
      let takenMs: number | undefined
      try {
        await until('the healthy worker to hold every partition', async () => (await owners()).get(healthyId)?.length === PARTITIONS, TAKEN_OVER_WITHIN_MS, 200)
        takenMs = Date.now() - stalledAt
        // Applied while the path is still down: events sent after the take-over, and all before.
        await Bun.sleep(2000)
        await stopLane()
        await untilAllEqual(20_000)
        stopLane = startLane()
        expect((await owners()).get(cutId) ?? []).toEqual([])
      } finally {
        console.log(`postgres partition: the healthy worker held all ${PARTITIONS} partitions ${takenMs ?? `never (> ${TAKEN_OVER_WITHIN_MS})`} ms after the stall; owners then ${JSON.stringify([...(await owners())])}`)
        proxy.restore()
      }
      expect(cut.output()).toContain('giving its partitions up to the other workers')
      await until('Postgres answers the cut-off worker again', () => cut.output().includes('Postgres answers again'), 20_000, 200)
      // It takes its share back (the healthy one gives its surplus up): a second hand-over under load.
      await until('the recovered worker holds partitions again', async () => ((await owners()).get(cutId)?.length ?? 0) > 0, 30_000, 200)
      await Bun.sleep(3000)
    } finally {
      await stopLane()
    }
    try {
      // Late statements of the cut-off worker reached Postgres when the path came back: none may
      // have applied an event a second time, and none may be missing.
      await untilAllEqual(30_000)
      expect(await rm.deadLetters()).toBe(0)
    } finally {
      await rm.close()
    }
    expect(cut.proc.exitCode).toBeNull()
    expect(healthy.proc.exitCode).toBeNull()
    await stopCleanly(...procs)
  }, 180_000)
})
