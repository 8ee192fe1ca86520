import { afterAll, describe, expect, test } from 'bun:test'
import { createTestEnv, type TestEnv } from '../../core/testing/env'
import { proxyDatabase, type TcpProxy } from '../../core/testing/tcp-proxy'
import { freePort, until, type Proc } from '../e2e/harness'
import { configureBoard, expectAppliedOnce, nodeVars, postEvents, readModel, scoreEvent, startNodes, stopCleanly, type ScoreEvent } from './support'

/** What the bound allows: the watch pings every second and waits FANFARE_DATABASE_TIMEOUT_MS (5 s), on a loaded 2-core machine. */
const NOTICED_WITHIN_MS = 15_000

/**
 * A worker and an API node whose path to Postgres stops carrying packets without a reset (the
 * host vanished, a partition, a stalled proxy): the tcp proxy between them holds every byte both
 * ways. The worker used to notice nothing until the path came back: its batches hung on their open
 * connections, nothing was logged, and the lag gauge kept the last batch's value (0: caught up)
 * while events piled up; the API's reads waited 30 s (a new connection's timeout) or until the
 * path came back. The worker must notice within seconds (its batches fail and are retried, the lag
 * gauge shows what waits), the API answer reads 503 and be not ready, both resume by themselves
 * when the path comes back, and every acknowledged event must be applied exactly once, though
 * statements the worker gave up on reach Postgres late.
 */
describe('worker and API node whose Postgres stops answering', () => {
  let env: TestEnv | undefined
  let proxy: TcpProxy | undefined
  const procs: Proc[] = []
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop('SIGKILL')))
    proxy?.close()
    await env?.cleanup()
  })

  test('noticed within seconds; everything applied exactly once after the path comes back', async () => {
    env = await createTestEnv({ FANFARE_PARTITIONS: '2', FANFARE_LEASE_TTL_MS: '2000' })
    const proxied = proxyDatabase(env.vars.DATABASE_URL)
    proxy = proxied.proxy
    const metricsPort = freePort()
    // Both nodes reach Postgres through the proxy (ingest needs only NATS, so events go on being stored).
    const node = nodeVars(env.vars, { DATABASE_URL: proxied.url })
    const { api } = node
    const { workerProc: worker } = await startNodes(node, procs, { worker: { LOG_LEVEL: 'info', FANFARE_METRICS_PORT: String(metricsPort) } })
    const board = `stall_${Math.random().toString(36).slice(2, 8)}`
    await configureBoard(api, board, 'sum')

    const rm = readModel(env.vars.DATABASE_URL)
    const sent: ScoreEvent[] = []
    let sending = true
    const lane = (async () => {
      for (let n = 0; sending; ) {
        const batch = Array.from({ length: 10 }, (_, p) => scoreEvent(`${board}-${n++}`, board, `p${p}`, 1 + (n % 7)))
        const res = await postEvents(api, batch)
        if (res.status !== 202) throw new Error(`POST /v1/events: ${res.status} ${JSON.stringify(res.body)}`)
        sent.push(...batch)
        await Bun.sleep(100)
      }
    })()
    /** The worker's lag gauge summed over the leaderboards projection's partitions. */
    const lag = async () => {
      const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text()
      return text
        .split('\n')
        .filter((l) => l.startsWith('fanfare_projection_lag_events{projection="leaderboards"'))
        .reduce((sum, l) => sum + Number(l.split(' ').at(-1)), 0)
    }
    const retried = () => worker.output().split('\n').some((l) => l.includes('batch failed with a transient error'))
    try {
      await until('projection under way', async () => (await rm.version(`leaderboard:${board}`)) > 100, 30_000, 100)
      expect(retried()).toBe(false)

      const stalledAt = Date.now()
      proxy.stall()
      // A read sent while the path is down: answered, not left waiting as long as the path is down.
      const read = Bun.sleep(500).then(async () => {
        const res = await fetch(`${api.baseUrl}/v1/leaderboards/${board}`, { signal: AbortSignal.timeout(NOTICED_WITHIN_MS) }).catch((err) => ({ status: String(err), json: async () => ({}) }))
        return { status: res.status, code: ((await res.json().catch(() => ({}))) as { error?: { code?: string } }).error?.code, ms: Date.now() - stalledAt }
      })
      const notReady = until('the API not ready', async () => (await fetch(`${api.baseUrl}/readyz`)).status === 503 && Date.now() - stalledAt, NOTICED_WITHIN_MS, 100).catch(() => Infinity)
      // Events go on being stored (NATS is fine); the worker must say it cannot apply them.
      let noticedMs: number | undefined
      let lagMs: number | undefined
      try {
        await until('the stuck batch to fail and be retried', retried, NOTICED_WITHIN_MS, 100)
        noticedMs = Date.now() - stalledAt
        // Not the last batch's value: what waits, which grows while events are stored.
        await until('the lag gauge to show the events waiting', async () => (await lag()) >= 100, NOTICED_WITHIN_MS - noticedMs, 200)
        lagMs = Date.now() - stalledAt
        // Stalled a while longer: the retries' new connections time out too, and pile up late statements.
        await Bun.sleep(6000)
        expect(await read).toEqual({ status: 503, code: 'database_unavailable', ms: expect.any(Number) })
        expect(await notReady).toBeLessThan(NOTICED_WITHIN_MS)
      } finally {
        const r = await read
        console.log(
          `postgres stall: worker batch retried after ${noticedMs ?? 'never (>15000)'} ms, its lag gauge >= 100 after ${lagMs ?? 'never'} ms (then ${await lag()}); ` +
            `API not ready after ${await notReady} ms, a read answered ${r.status} ${r.code ?? ''} after ${r.ms} ms`,
        )
        proxy.restore()
      }
      expect(worker.output()).toContain('Postgres does not answer')
      await until('Postgres answers the worker again', () => worker.output().includes('Postgres answers again') || worker.proc.exitCode !== null, 20_000, 200)
      await Bun.sleep(2000)
    } finally {
      sending = false
      await lane
    }

    try {
      // Statements the worker gave up on reached Postgres when the path came back: none may have
      // applied an event a second time, and none may be missing.
      await expectAppliedOnce(rm, board, sent, 30_000)
      await until('the lag gauge back to 0', async () => (await lag()) === 0, 15_000, 200)
    } finally {
      await rm.close()
    }
    expect(worker.proc.exitCode).toBeNull()
    await stopCleanly(...procs)
  }, 120_000)
})
