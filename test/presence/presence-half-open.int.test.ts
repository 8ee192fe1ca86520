import { afterAll, describe, expect, test } from 'bun:test'
import { mintUserToken } from '../../api/src/auth/mint'
import { startTestNode, type TestNode } from '../../api/src/test-support'
import { closeCodeIn, maskedFrame, upgradeRequest } from '../../core/testing/raw-websocket'
import { tcpProxy, type TcpProxy } from '../../core/testing/tcp-proxy'
import { freePort, until, WsClient } from '../e2e/harness'

const IDLE_S = 8
const GRACE_MS = 1000

/**
 * Presence accuracy when a client's network goes silent without a close (a phone losing signal, a
 * laptop lid, a dead NAT entry): no FIN, no close frame, the server hears nothing more. Bun keeps
 * such a socket until its WebSocket idle timeout (default 120 s), so the user stayed present for
 * about 125 s (measured: 125.2 s with the defaults) while everyone else saw a ghost. And Bun restarts
 * that timeout at every frame it sends, so a ghost on a busy channel was never timed out at all.
 * Fanfare closes a client not heard from (no frame, no pong) within FANFARE_WS_IDLE_TIMEOUT_S
 * (default 30) itself, whatever it sends it: it pings quiet clients, and a healthy one answers by
 * itself (every WebSocket client does), however long it says nothing.
 */
describe('presence of a client whose network went silent', () => {
  const nodes: TestNode[] = []
  const proxies: TcpProxy[] = []
  const clients: WsClient[] = []
  afterAll(async () => {
    for (const c of clients) c.close()
    for (const p of proxies) p.close()
    for (const n of nodes) await n.close()
  })
  const startNode = async () => {
    const node = await startTestNode({ FANFARE_WS_IDLE_TIMEOUT_S: String(IDLE_S), FANFARE_PRESENCE_GRACE_MS: String(GRACE_MS) })
    nodes.push(node)
    const proxy = tcpProxy({ port: freePort(), target: { host: '127.0.0.1', port: Number(new URL(node.base).port) } })
    proxies.push(proxy)
    return { node, proxy }
  }

  test(`it leaves within the idle timeout (${IDLE_S} s here) plus the grace; a quiet healthy client stays`, async () => {
    const { node, proxy } = await startNode()
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
    const users = async () => ((await (await fetch(`${node.base}/v1/presence/${channel}`)).json()) as { members: { user: string }[] }).members.map((m) => m.user).sort()
    expect(await users()).toEqual(['ghost', 'quiet', 'watcher'])

    const silentAt = Date.now()
    proxy.stall()
    await until('the ghost left', async () => !(await users()).includes('ghost'), 30_000, 250)
    const goneAfter = Date.now() - silentAt
    // Closed between the timeout and the timeout plus one sweep (timeout / 4) after it was last
    // heard, then the grace; a margin for a loaded machine.
    expect(goneAfter).toBeLessThan(IDLE_S * 1250 + GRACE_MS + 3000)
    const leave = watcher.frames.find((f) => f.channel === `presence:${channel}` && f.op === 'update' && f.data.kind === 'leave')
    expect(leave?.data).toMatchObject({ kind: 'leave', user: 'ghost', reason: 'disconnected' })

    // The quiet client has sent nothing since it subscribed: over two timeouts, answered pings only
    // (nothing is sent to it either: the node's pings are all it gets).
    await Bun.sleep(Math.max(0, 2 * IDLE_S * 1000 + 2000 - (Date.now() - silentAt)))
    expect(quiet.closed).toBeUndefined()
    expect(await users()).toEqual(['quiet', 'watcher'])
    expect(ghost.closed).toBeUndefined() // its network never told it either: the SDK finds out by its own ping
    console.log(`half-open client gone from presence after ${goneAfter} ms`)
  }, 60_000)

  test(`on a channel that keeps changing it leaves within the idle timeout plus one sweep and the grace; a client that only receives stays`, async () => {
    const { node, proxy } = await startNode()
    const secret = node.env.vars.FANFARE_JWT_SECRET
    const channel = 'chat:busy'
    const presence = `presence:${channel}`
    const open = async (url: string, sub: string, channels: string[]) => {
      const c = await WsClient.open(`${url}?token=${await mintUserToken(secret, { sub })}`)
      clients.push(c)
      for (const ch of channels) {
        c.send({ op: 'subscribe', channel: ch })
        await until(`${sub} subscribed to ${ch}`, () => c.of(ch).length > 0)
      }
      return c
    }
    // The ghost is in the channel and watches who is in it: every change is sent to it.
    const ghost = await open(`ws://127.0.0.1:${proxy.port}/v1/ws`, 'ghost', [channel, presence])
    // The listener is in it too and only receives: it sends nothing after its subscribes.
    const listener = await open(node.wsUrl, 'listener', [channel, presence])
    const churner = await open(node.wsUrl, 'churner', [])
    // A client whose network is fine but which never answers a ping (spoken by hand: every
    // WebSocket client answers): it reads everything, so the close frame reaches it.
    const port = Number(new URL(node.base).port)
    const rawBytes: Buffer[] = []
    const received = () => Buffer.concat(rawBytes)
    let muteClosedAt: number | undefined
    const raw = await Bun.connect({
      hostname: '127.0.0.1',
      port,
      socket: {
        data: (_, d) => {
          rawBytes.push(Buffer.from(d))
          if (muteClosedAt === undefined && closeCodeIn(received()) !== undefined) muteClosedAt = Date.now()
        },
      },
    })
    raw.write(upgradeRequest(`127.0.0.1:${port}`, `/v1/ws?token=${await mintUserToken(secret, { sub: 'mute' })}`))
    await until('the mute client upgraded', () => received().includes('\r\n\r\n'))
    raw.write(maskedFrame({ op: 'subscribe', channel: presence }))
    await until('the mute client subscribed', () => received().includes('"op":"snapshot"'))
    const muteFrom = Date.now()
    const users = async () => ((await (await fetch(`${node.base}/v1/presence/${channel}`)).json()) as { members: { user: string }[] }).members.map((m) => m.user).sort()
    expect(await users()).toEqual(['ghost', 'listener'])

    // The channel's presence changes every 300 ms (the churner joins and leaves) until the end.
    let churning = true
    const churn = (async () => {
      for (let i = 0; churning; i++) {
        churner.send({ op: i % 2 === 0 ? 'subscribe' : 'unsubscribe', channel })
        await Bun.sleep(300)
      }
    })()
    try {
      const silentAt = Date.now()
      proxy.stall()
      await until('the ghost left', async () => !(await users()).includes('ghost'), 30_000, 250)
      const goneAfter = Date.now() - silentAt
      // Closed between the timeout and the timeout plus one sweep (timeout / 4) after it was last
      // heard, then the grace; a margin for a loaded machine.
      expect(goneAfter).toBeLessThan(IDLE_S * 1250 + GRACE_MS + 3000)
      const leave = listener.frames.find((f) => f.channel === presence && f.op === 'update' && f.data.kind === 'leave' && f.data.user === 'ghost')
      expect(leave?.data).toMatchObject({ kind: 'leave', user: 'ghost', reason: 'disconnected' })

      // The listener sent nothing since its subscribes, over two timeouts: it answered pings only.
      const updates = listener.of(presence).length
      await Bun.sleep(Math.max(0, 2 * IDLE_S * 1000 + 2000 - (Date.now() - silentAt)))
      expect(listener.closed).toBeUndefined()
      expect(listener.of(presence).length).toBeGreaterThan(updates + 10)
      expect((await users()).filter((u) => u !== 'churner')).toEqual(['listener'])
      expect(ghost.closed).toBeUndefined() // the close frame is held with everything else
      // The mute client was told to reconnect (4012), not before the timeout.
      expect(closeCodeIn(received())).toBe(4012)
      expect(muteClosedAt! - muteFrom).toBeGreaterThan(IDLE_S * 1000)
      expect(muteClosedAt! - muteFrom).toBeLessThan(IDLE_S * 1250 + 3000)
      raw.end()
      console.log(`half-open client on a busy channel gone from presence after ${goneAfter} ms; the mute one closed (4012) after ${muteClosedAt! - muteFrom} ms`)
    } finally {
      churning = false
      await churn
    }
  }, 60_000)
})
