import { afterAll, describe, expect, test } from 'bun:test'
import { createTestEnv, TEST_NATS_URL, type TestEnv } from '../../core/testing/env'
import { tcpProxy, type TcpProxy } from '../../core/testing/tcp-proxy'
import { freePort, spawnProc, until, waitReady, WsClient, type Proc } from '../e2e/harness'

/**
 * A rolling restart's SIGTERM on an API node while clients publish: the node stops taking new
 * connections at once, but what it already accepted is answered before it exits. Every REST
 * request in flight gets its 202 (not a reset connection), and every WebSocket publish in flight
 * gets its ack before the socket is closed with 1001. Before, the node cut both: a publisher saw
 * "socket closed unexpectedly" for events JetStream had stored, and had to guess and resend.
 * NATS is reached through a proxy that delays every chunk, so the publishes are surely in flight
 * when the signal comes.
 */
describe('API node: SIGTERM drains what it accepted', () => {
  let env: TestEnv
  let proxy: TcpProxy | undefined
  let api: Proc | undefined
  afterAll(async () => {
    await api?.stop('SIGKILL')
    proxy?.close()
    await env?.cleanup()
  })

  test('in-flight REST requests are answered 202 and WebSocket publishes acked before 1001', async () => {
    env = await createTestEnv()
    const nats = new URL(TEST_NATS_URL)
    proxy = tcpProxy({ port: freePort(), target: { host: nats.hostname, port: Number(nats.port) } })
    const port = freePort()
    const base = `http://127.0.0.1:${port}`
    api = spawnProc('api', 'api/src/main.ts', { ...env.vars, NATS_URL: `nats://127.0.0.1:${proxy.port}`, PORT: String(port), HOST: '127.0.0.1' })
    await waitReady(base, [api])

    const token = env.vars.FANFARE_INGEST_TOKEN
    const ws = await WsClient.open(`ws://127.0.0.1:${port}/v1/ws?token=${token}`)
    const idle = await WsClient.open(`ws://127.0.0.1:${port}/v1/ws`)
    // Each JetStream round trip now takes at least 2 x 400 ms.
    proxy.delay(400)

    const post = (i: number) =>
      fetch(`${base}/v1/events`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
        body: JSON.stringify({ events: [{ id: `drain-${i}`, type: 'score.submitted', data: { board: 'drain', player: `p${i}`, score: i } }] }),
      }).then(
        async (res) => `${res.status}`,
        (err) => `cut: ${(err as Error).message}`,
      )
    const answers = Promise.all(Array.from({ length: 8 }, (_, i) => post(i)))
    for (let i = 0; i < 4; i++) ws.send({ op: 'publish', ref: `w${i}`, event: { id: `ws-${i}`, type: 'score.submitted', data: { board: 'drain', player: `w${i}`, score: i } } })
    await Bun.sleep(200)

    api.proc.kill('SIGTERM')
    // New connections are refused at once (a load balancer moves on), while the drain goes on.
    await until(
      'the listener closed',
      async () => (await fetch(`${base}/healthz`).then(() => 'open', (e) => String(e))).includes('Unable to connect'),
      2_000,
      20,
    )
    expect(await answers).toEqual(Array(8).fill('202'))
    await until('the sockets closed', () => ws.closed && idle.closed, 10_000)
    const acks = ws.frames.filter((f) => f.op === 'ack').map((f) => f.ref)
    expect(acks.sort()).toEqual(['w0', 'w1', 'w2', 'w3'])
    expect(ws.closed).toEqual({ code: 1001, reason: 'server shutting down' })
    expect(idle.closed).toEqual({ code: 1001, reason: 'server shutting down' })
    expect(await api.proc.exited).toBe(0)
  }, 60_000)
})
