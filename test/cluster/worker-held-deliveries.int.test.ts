import { afterAll, describe, expect, test } from 'bun:test'
import { createTestEnv, type TestEnv } from '../../core/testing/env'
import { freePort, spawnProc, until, waitReady, type Proc } from '../e2e/harness'
import { configureBoard, postEvents, scoreEvent, startProxiedNats, type Api, type ProxiedNats } from './support'

const EVENTS = 10_000
const PLAYERS = 50
const HOLD_MS = 15_000

/**
 * Field notes, complaint 8: "projections skipping or stalling at gaps in sequences". A worker
 * catches up a backlog through a link that stops carrying the server's messages in the middle of
 * a pull of 4,999 (a slow network; the worker's own requests still go through) for longer than a
 * pull waits, then carries them again in order. Every event is applied exactly once: nothing of
 * the held pull is skipped, and the worker does not stall after it.
 */
describe('worker: a pull held part-way by the network', () => {
  let env: TestEnv | undefined
  let proxied: ProxiedNats | undefined
  const procs: Proc[] = []
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop('SIGKILL')))
    await proxied?.stop()
    await env?.cleanup()
  })

  test('every event summed once after the link carries the rest of the pull', async () => {
    proxied = await startProxiedNats('worker-held')
    const { nats, proxy, proxiedUrl } = proxied
    // One partition; big pulls (one spans many TCP chunks); a lease that outlives the hold.
    env = await createTestEnv({ FANFARE_PARTITIONS: '1', FANFARE_BATCH_SIZE: '5000', FANFARE_LEASE_TTL_MS: '60000' })
    const port = freePort()
    const base: Record<string, string> = { ...env.vars, HOST: '127.0.0.1', NATS_URL: nats.url }
    procs.push(spawnProc('api', 'api/src/main.ts', { ...base, PORT: String(port) }))
    const api: Api = { baseUrl: `http://127.0.0.1:${port}`, ingestToken: base.FANFARE_INGEST_TOKEN, adminToken: base.FANFARE_ADMIN_TOKEN }
    await waitReady(api.baseUrl, procs)
    const board = `held_${Math.random().toString(36).slice(2, 8)}`
    await configureBoard(api, board, 'sum')
    for (let n = 0; n < EVENTS; n += 500) {
      const events = Array.from({ length: 500 }, (_, k) => scoreEvent(`${board}-${n + k}`, board, `p${(n + k) % PLAYERS}`, 1))
      expect((await postEvents(api, events)).status).toBe(202)
    }

    // The leaderboards consumer's deliveries carry its name in their reply subject: let the first
    // 1,500 through (the first pull's one and part of the next), hold the rest.
    const holding = proxy.holdAfter('.leaderboards_p0_r', 1500)
    procs.push(spawnProc('worker', 'stream-workers/src/main.ts', { ...base, NATS_URL: proxiedUrl }))
    await holding
    await Bun.sleep(HOLD_MS)
    proxy.release()

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
  }, 180_000)
})
