import { afterAll, describe, expect, test } from 'bun:test'
import { createTestEnv, type TestEnv } from '../../core/testing/env'
import { freePort, spawnProc, until, waitReady, type Proc } from '../e2e/harness'
import { apiAt, configureBoard, postEvents, scoreEvent, startProxiedNats, type ProxiedNats } from './support'

const EVENTS = 10_000
const PLAYERS = 50
const HOLD_MS = 15_000

/**
 * Field notes, complaint 8: "projections skipping or stalling at gaps in sequences". A worker
 * catches up a backlog of 10,000 events through a link that fails in the middle of a pull of
 * 4,999 (its first 1,500 deliveries through): held for longer than a pull waits and then carried
 * on in order (a slow network), or dropped with the connection (the rest of the pull is lost on
 * the way; NATS reconnects). Every event must be applied exactly once, and the worker must not
 * stall: acking past lost deliveries would ack them too (the consumer acks all), skipping them for
 * good, so the worker has to see the gap in delivery sequences and read again from its checkpoint.
 */
describe('worker: a pull cut part-way by the network', () => {
  const envs: TestEnv[] = []
  const nats: ProxiedNats[] = []
  const procs: Proc[] = []
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop('SIGKILL')))
    for (const n of nats) await n.stop()
    for (const e of envs) await e.cleanup()
  })

  /** An API node on a private NATS holding a backlog for a 'sum' board; the worker not yet started. */
  async function backlog(name: string) {
    const proxied = await startProxiedNats(name)
    nats.push(proxied)
    // One partition; big pulls (one spans many TCP chunks); a lease that outlives the fault.
    const env = await createTestEnv({ FANFARE_PARTITIONS: '1', FANFARE_BATCH_SIZE: '5000', FANFARE_LEASE_TTL_MS: '60000' })
    envs.push(env)
    const port = freePort()
    const base: Record<string, string> = { ...env.vars, HOST: '127.0.0.1', NATS_URL: proxied.nats.url }
    procs.push(spawnProc('api', 'api/src/main.ts', { ...base, PORT: String(port) }))
    const api = apiAt(port, base)
    await waitReady(api.baseUrl, procs)
    const board = `held_${Math.random().toString(36).slice(2, 8)}`
    await configureBoard(api, board, 'sum')
    for (let n = 0; n < EVENTS; n += 500) {
      const events = Array.from({ length: 500 }, (_, k) => scoreEvent(`${board}-${n + k}`, board, `p${(n + k) % PLAYERS}`, 1))
      expect((await postEvents(api, events)).status).toBe(202)
    }
    return {
      proxy: proxied.proxy,
      /**
       * Starts the worker through the proxy; resolves once the leaderboards consumer's first
       * 1,500 deliveries went through (they carry its name in their reply subject) and the rest
       * is held.
       */
      startWorkerAndHold: async () => {
        const holding = proxied.proxy.holdAfter('.leaderboards_p0_r', 1500)
        procs.push(spawnProc(`worker-${name}`, 'stream-workers/src/main.ts', { ...base, NATS_URL: proxied.proxiedUrl }))
        await holding
      },
      expectEverySummedOnce: async () => {
        const sums = async () => ((await (await fetch(`${api.baseUrl}/v1/leaderboards/${board}?limit=100`)).json()) as any).entries as { player: string; score: number }[]
        const want = Array.from({ length: PLAYERS }, (_, p) => `p${p}:${EVENTS / PLAYERS}`).sort()
        let last: string[] = []
        await until(
          'every event summed once',
          async () => Bun.deepEquals((last = (await sums()).map((e) => `${e.player}:${e.score}`).sort()), want),
          60_000,
          250,
        ).catch((err) => {
          throw new Error(`${err}; the board holds ${JSON.stringify(last.slice(0, 10))}...`)
        })
      },
    }
  }

  test('held past the pull, then carried on: every event summed once', async () => {
    const b = await backlog('worker-held')
    await b.startWorkerAndHold()
    await Bun.sleep(HOLD_MS)
    b.proxy.release()
    await b.expectEverySummedOnce()
  }, 180_000)

  test('dropped with the connection (NATS reconnects): the lost rest is read again, every event summed once', async () => {
    const b = await backlog('worker-dropped')
    await b.startWorkerAndHold()
    // Closing the connections throws the held rest of the pull away; the worker reconnects at once.
    b.proxy.cut()
    b.proxy.restore()
    await b.expectEverySummedOnce()
  }, 180_000)
})
