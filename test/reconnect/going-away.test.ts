import { afterAll, describe, expect, test } from 'bun:test'
import { createTestEnv, type TestEnv } from '../../core/testing/env'
import { freePort, spawnProc, until, waitReady, WsClient, type Proc } from '../e2e/harness'

/** SIGTERM on an API process: every WebSocket is closed with 1001 "going away", then it exits 0. */
describe('api shutdown', () => {
  let env: TestEnv
  let api: Proc | undefined
  afterAll(async () => {
    await api?.stop('SIGKILL')
    await env?.cleanup()
  })

  test('clients see 1001 going away and the process exits 0 within a bound', async () => {
    env = await createTestEnv()
    const port = freePort()
    api = spawnProc('api', 'api/src/main.ts', { ...env.vars, PORT: String(port), HOST: '127.0.0.1' })
    await waitReady(`http://127.0.0.1:${port}`, [api])
    const clients = await Promise.all([1, 2, 3].map(() => WsClient.open(`ws://127.0.0.1:${port}/v1/ws`)))
    clients[0].send({ op: 'subscribe', channel: 'leaderboard:shutdown' })
    await until('snapshot', () => clients[0].of('leaderboard:shutdown').length === 1)
    const started = Date.now()
    api.proc.kill('SIGTERM')
    const code = await Promise.race([api.proc.exited, Bun.sleep(10_000).then(() => 'timeout')])
    expect(code).toBe(0)
    expect(Date.now() - started).toBeLessThan(10_000)
    await until('close events', () => clients.every((c) => c.closed), 5_000)
    for (const c of clients) expect(c.closed).toEqual({ code: 1001, reason: 'server shutting down' })
  }, 60_000)
})
