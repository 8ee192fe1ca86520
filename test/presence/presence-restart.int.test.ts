import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { mintUserToken } from '../../api/src/auth/mint'
import { createTestEnv, type TestEnv } from '../../core/testing/env'
import { freePort, spawnInContainer, spawnProc, until, waitReady, WsClient, type Proc } from '../e2e/harness'

const TTL_MS = 6000
const GRACE_MS = 1500

/**
 * An API node SIGKILLed and started again at once under the same node id, as a container
 * restarted in place is (same hostname, pid 1): node A runs in namespaces of its own for that.
 * Its users died with it: those who do not come back leave with `node_lost` (the reason clients
 * and game servers see when a node dies), not `disconnected` as a user whose socket closed; those
 * who reconnect within the TTL, to the new run, neither leave nor join. Every node ends equal.
 */
describe('an API node killed and restarted in place under the same node id', () => {
  let env: TestEnv
  const procs: Proc[] = []
  const opened: WsClient[] = []
  let portA = 0
  let portB = 0
  beforeAll(async () => {
    env = await createTestEnv({
      HOST: '127.0.0.1',
      FANFARE_PRESENCE_TTL_MS: String(TTL_MS),
      FANFARE_PRESENCE_GRACE_MS: String(GRACE_MS),
      FANFARE_PRESENCE_INTERVAL_MS: '200',
    })
    portA = freePort()
    portB = freePort()
    procs.push(spawnInContainer('api-a', 'presence-node-a', 'api/src/main.ts', { ...env.vars, PORT: String(portA) }))
    procs.push(spawnProc('api-b', 'api/src/main.ts', { ...env.vars, PORT: String(portB) }))
    await waitReady(`http://127.0.0.1:${portA}`, procs)
    await waitReady(`http://127.0.0.1:${portB}`, procs)
  })
  afterAll(async () => {
    for (const c of opened) c.close()
    await Promise.all(procs.map((p) => p.stop('SIGKILL')))
    await env?.cleanup()
  })

  const token = (sub: string) => mintUserToken(env.vars.FANFARE_JWT_SECRET, { sub })
  async function client(port: number, sub: string | undefined, channel: string) {
    const c = await WsClient.open(`ws://127.0.0.1:${port}/v1/ws${sub ? `?token=${await token(sub)}` : ''}`)
    opened.push(c)
    c.send({ op: 'subscribe', ref: channel, channel })
    await until(`${sub ?? 'anonymous'} subscribed`, () => c.frames.some((f) => f.channel === channel && f.op === 'snapshot'))
    return c
  }
  const rest = async (port: number, channel: string) => (await fetch(`http://127.0.0.1:${port}/v1/presence/${channel}`)).json() as Promise<any>
  const joinsAndLeaves = (c: WsClient, from = 0) => c.frames.slice(from).filter((f) => f.op === 'update' && f.data.kind !== 'count').map((f) => `${f.data.kind}:${f.data.user}${f.data.reason ? `:${f.data.reason}` : ''}`)

  test('its users who do not come back leave with node_lost; those who reconnect to the new run within the TTL neither leave nor join', async () => {
    const watch = await client(portB, undefined, 'presence:chat:restart')
    await client(portA, 'gone', 'chat:restart')
    await client(portA, 'back', 'chat:restart')
    await client(portB, 'stay', 'chat:restart')
    await until('three present', () => joinsAndLeaves(watch).length === 3, 5000)
    const from = watch.frames.length

    const killedAt = Date.now()
    await procs[0].stop('SIGKILL')
    procs[0] = spawnInContainer('api-a', 'presence-node-a', 'api/src/main.ts', { ...env.vars, PORT: String(portA) })
    await waitReady(`http://127.0.0.1:${portA}`, procs)
    // The restart was quicker than the TTL: B learns of A's death from the new run, not from silence.
    expect(Date.now() - killedAt).toBeLessThan(TTL_MS)
    await client(portA, 'back', 'chat:restart')

    const leave = await until('gone leaves', () => watch.frames.slice(from).find((f) => f.data?.kind === 'leave'), TTL_MS + 5000)
    expect(leave.data).toMatchObject({ user: 'gone', reason: 'node_lost' })
    expect(Date.now() - killedAt).toBeLessThan(TTL_MS + 3000)
    // Past the TTL of the dead run, and the grace, with room for a late timer: nothing else happened.
    await Bun.sleep(GRACE_MS + 1000)
    expect(joinsAndLeaves(watch, from)).toEqual(['leave:gone:node_lost'])
    for (const port of [portA, portB]) {
      const r = await rest(port, 'chat:restart')
      expect({ connections: r.connections, users: r.users, members: r.members.map((m: any) => m.user) }).toEqual({ connections: 2, users: 2, members: ['back', 'stay'] })
    }
  }, 60_000)

  test('a user who reconnected to the new run and unsubscribes before the dead run is dropped leaves at once as left, not at the TTL as node_lost', async () => {
    const watch = await client(portB, undefined, 'presence:chat:hop')
    await client(portA, 'gone', 'chat:hop')
    await client(portA, 'hopper', 'chat:hop')
    await until('two present', () => joinsAndLeaves(watch).length === 2, 5000)
    const from = watch.frames.length
    await procs[0].stop('SIGKILL')
    procs[0] = spawnInContainer('api-a', 'presence-node-a', 'api/src/main.ts', { ...env.vars, PORT: String(portA) })
    await waitReady(`http://127.0.0.1:${portA}`, procs)
    const hopper = await client(portA, 'hopper', 'chat:hop')
    // B has heard the new run (its full state names hopper again) before hopper leaves.
    await Bun.sleep(1500)
    hopper.send({ op: 'unsubscribe', ref: 'u', channel: 'chat:hop' })
    await hopper.reply('u')
    const since = Date.now()
    const leave = await until('hopper leaves', () => watch.frames.slice(from).find((f) => f.data?.kind === 'leave' && f.data.user === 'hopper'), TTL_MS + 5000)
    expect(leave.data).toMatchObject({ reason: 'left' })
    expect(Date.now() - since).toBeLessThan(1000)
    await until('gone leaves', () => joinsAndLeaves(watch, from).length === 2, TTL_MS + 5000)
    expect(joinsAndLeaves(watch, from)).toEqual(['leave:hopper:left', 'leave:gone:node_lost'])
  }, 60_000)
})
