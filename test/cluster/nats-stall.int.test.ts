import { afterAll, describe, expect, test } from 'bun:test'
import { createTestEnv, type TestEnv } from '../../core/testing/env'
import { freePort, spawnProc, until, waitReady, WsClient, type Proc } from '../e2e/harness'
import { apiAt, BoardView, configureBoard, postEvents, readModel, scoreEvent, startProxiedNats, stopCleanly, untilVersionSettles, type ProxiedNats } from './support'

/**
 * The network between one API node and NATS silently stops carrying packets (no reset, no close:
 * a partition), while another node takes the events. The cut-off node answers ingest 503
 * `unavailable` within its publish timeout (never a 202, never a hang), says it is not ready, and
 * once the path is back its subscribers get every change they missed, in order (or a resync).
 */
describe('API node partitioned from NATS', () => {
  let env: TestEnv | undefined
  let proxied: ProxiedNats | undefined
  const procs: Proc[] = []
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop('SIGKILL')))
    await proxied?.stop()
    await env?.cleanup()
  })

  test('503 and not ready while cut off; its subscriber has every change after', async () => {
    proxied = await startProxiedNats('nats-stall')
    const { nats, proxy, proxiedUrl } = proxied
    env = await createTestEnv({ FANFARE_PARTITIONS: '2', FANFARE_LEASE_TTL_MS: '2000' })
    const [cutPort, otherPort] = [freePort(), freePort()]
    const base: Record<string, string> = { ...env.vars, HOST: '127.0.0.1', NATS_URL: nats.url }
    const cutOff = spawnProc('api-cut-off', 'api/src/main.ts', { ...base, PORT: String(cutPort), NATS_URL: proxiedUrl })
    procs.push(cutOff, spawnProc('api', 'api/src/main.ts', { ...base, PORT: String(otherPort) }), spawnProc('worker', 'stream-workers/src/main.ts', base))
    const cutApi = apiAt(cutPort, base)
    const api = apiAt(otherPort, base)
    await waitReady(cutApi.baseUrl, procs)
    await waitReady(api.baseUrl, procs)
    const board = 'stall'
    const channel = `leaderboard:${board}`
    await configureBoard(api, board, 'latest')
    // Scores only rise, so an update applied out of order shows (BoardView `increasing`).
    const view = new BoardView(await WsClient.open(`ws://127.0.0.1:${cutPort}/v1/ws`), { increasing: true })
    view.client.send({ op: 'subscribe', ref: 's', channel })
    await until('the snapshot', () => view.client.of(channel).length > 0)

    let n = 0
    let sending = true
    const sender = (async () => {
      while (sending) {
        const res = await postEvents(api, Array.from({ length: 5 }, (_, p) => scoreEvent(`${board}-${n}-${p}`, board, `p${p}`, n * 10 + p + 1)))
        if (res.status !== 202) throw new Error(`POST to the connected node: ${res.status} ${JSON.stringify(res.body)}`)
        n++
        await Bun.sleep(100)
      }
    })()
    await until('updates flowing', () => view.catchUp(channel).version >= 50, 20_000)

    proxy.stall()
    const stalledAt = Date.now()
    const res = await postEvents(cutApi, [scoreEvent(`${board}-x`, board, 'px', 1)], 15_000)
    expect(`${res.status} ${res.body?.error?.code}`).toBe('503 unavailable')
    expect(Date.now() - stalledAt).toBeLessThan(7000) // the publish timeout is 5 s
    await until('the cut-off node not ready', async () => (await fetch(`${cutApi.baseUrl}/readyz`, { signal: AbortSignal.timeout(5000) })).status === 503, 20_000, 500)
    await Bun.sleep(3000)
    proxy.restore()
    await waitReady(cutApi.baseUrl, procs)
    await Bun.sleep(2000)
    sending = false
    await sender

    const rm = readModel(env.vars.DATABASE_URL)
    try {
      const version = await untilVersionSettles(rm, channel, 20_000)
      await until(`the subscriber at version ${version}`, () => view.catchUp(channel).version === version, 20_000)
      expect(Object.fromEntries(view.board)).toEqual(Object.fromEntries(await rm.scores(board)))
      expect(await rm.deadLetters()).toBe(0)
    } finally {
      await rm.close()
    }
    await stopCleanly(...procs)
  }, 120_000)
})
