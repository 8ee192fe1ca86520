import { afterAll, describe, expect, test } from 'bun:test'
import { mintUserToken } from '../../api/src/auth/mint'
import { startTestNode, type TestNode } from '../../api/src/test-support'
import { tcpProxy, type TcpProxy } from '../../core/testing/tcp-proxy'
import { freePort, until, WsClient } from '../e2e/harness'

const IDLE_S = 8
const GRACE_MS = 1000

/**
 * Presence accuracy when a client's network goes silent without a close (a phone losing signal, a
 * laptop lid, a dead NAT entry): no FIN, no close frame, the server hears nothing more. Bun keeps
 * such a socket until its WebSocket idle timeout (default 120 s), so the user stayed present for
 * about 125 s (measured: 125.2 s with the defaults) while everyone else saw a ghost. Fanfare now
 * sets the timeout (FANFARE_WS_IDLE_TIMEOUT_S, default 30): the server pings a quiet client shortly
 * before it, and closes a socket that does not answer. A healthy client that says nothing for
 * several timeouts stays: every WebSocket client answers pings by itself.
 */
describe('presence of a client whose network went silent', () => {
  let node: TestNode | undefined
  let proxy: TcpProxy | undefined
  const clients: WsClient[] = []
  afterAll(async () => {
    for (const c of clients) c.close()
    proxy?.close()
    await node?.close()
  })

  test(`it leaves within the idle timeout (${IDLE_S} s here) plus the grace; a quiet healthy client stays`, async () => {
    node = await startTestNode({ FANFARE_WS_IDLE_TIMEOUT_S: String(IDLE_S), FANFARE_PRESENCE_GRACE_MS: String(GRACE_MS) })
    proxy = tcpProxy({ port: freePort(), target: { host: '127.0.0.1', port: Number(new URL(node.base).port) } })
    const secret = node.env.vars.FANFARE_JWT_SECRET
    const channel = 'chat:lid'
    const open = async (url: string, sub: string) => {
      const c = await WsClient.open(`${url}?token=${await mintUserToken(secret, { sub })}`)
      clients.push(c)
      c.send({ op: 'subscribe', channel })
      await until(`${sub} subscribed`, () => c.of(channel).length > 0)
      return c
    }
    const ghost = await open(`ws://127.0.0.1:${proxy.port}/v1/ws`, 'ghost')
    const quiet = await open(node.wsUrl, 'quiet')
    const watcher = await open(node.wsUrl, 'watcher')
    watcher.send({ op: 'subscribe', channel: `presence:${channel}` })
    await until('watching presence', () => watcher.of(`presence:${channel}`).length > 0)
    const users = async () => ((await (await fetch(`${node!.base}/v1/presence/${channel}`)).json()) as { members: { user: string }[] }).members.map((m) => m.user).sort()
    expect(await users()).toEqual(['ghost', 'quiet', 'watcher'])

    const silentAt = Date.now()
    proxy.stall()
    await until('the ghost left', async () => !(await users()).includes('ghost'), 30_000, 250)
    const goneAfter = Date.now() - silentAt
    // The ping goes out shortly before the timeout, the close at it, then the grace, on a loaded machine.
    expect(goneAfter).toBeLessThan((IDLE_S + 4) * 1000 + GRACE_MS)
    const leave = watcher.frames.find((f) => f.channel === `presence:${channel}` && f.op === 'update' && f.data.kind === 'leave')
    expect(leave?.data).toMatchObject({ kind: 'leave', user: 'ghost', reason: 'disconnected' })

    // The quiet client has sent nothing since it subscribed: over two timeouts, answered pings only.
    await Bun.sleep(Math.max(0, 2 * IDLE_S * 1000 + 2000 - (Date.now() - silentAt)))
    expect(quiet.closed).toBeUndefined()
    expect(await users()).toEqual(['quiet', 'watcher'])
    expect(ghost.closed).toBeUndefined() // its network never told it either: the SDK finds out by its own ping
    console.log(`half-open client gone from presence after ${goneAfter} ms`)
  }, 60_000)
})
