import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { mintUserToken } from '../../api/src/auth/mint'
import { privateNatsDeployment, type PrivateNatsDeployment } from '../cluster/support'
import { startApiNodes, until, WsClient, type Proc } from '../e2e/harness'

const TTL_MS = 2000
const GRACE_MS = 500

/**
 * Presence through a NATS outage longer than the TTL, on two real API nodes and a private
 * nats-server killed with SIGKILL: meanwhile each node keeps what it knew of the other (it cannot
 * tell a dead node from its own cut) and its own users keep coming and going. Once NATS is back,
 * every presence subscriber (checked version by version, a re-sync snapshot allowed) and GET
 * /v1/presence on each node must equal the truth, and nobody who stayed connected ever left.
 */
describe('presence through a NATS outage', () => {
  let d: PrivateNatsDeployment
  const procs: Proc[] = []
  const ports: number[] = []
  const opened: WsClient[] = []
  beforeAll(async () => {
    d = await privateNatsDeployment('presence', {
      FANFARE_PRESENCE_TTL_MS: String(TTL_MS),
      FANFARE_PRESENCE_GRACE_MS: String(GRACE_MS),
      FANFARE_PRESENCE_INTERVAL_MS: '100',
    })
    ports.push(...(await startApiNodes(['a', 'b'], d.vars, procs)))
  }, 60_000)
  afterAll(async () => {
    for (const c of opened) c.close()
    await Promise.all(procs.map((p) => p.stop('SIGKILL')))
    await d?.close()
  })

  const token = (sub: string) => mintUserToken(d.env.vars.FANFARE_JWT_SECRET, { sub })
  async function client(node: number, sub: string | undefined, channel: string) {
    const c = await WsClient.open(`ws://127.0.0.1:${ports[node]}/v1/ws${sub ? `?token=${await token(sub)}` : ''}`)
    opened.push(c)
    c.send({ op: 'subscribe', ref: channel, channel })
    await until(`${sub ?? 'anonymous'} subscribed`, () => c.frames.some((f) => f.channel === channel && f.op === 'snapshot'))
    return c
  }
  function held(c: WsClient, channel: string) {
    const state = { connections: 0, members: new Set<string>(), version: -1, epoch: '' }
    for (const f of c.frames.filter((x) => x.channel === channel)) {
      if (f.op === 'snapshot') {
        Object.assign(state, { connections: f.data.connections, version: f.version, epoch: f.epoch, members: new Set(f.data.members.map((m: any) => m.user)) })
        continue
      }
      if (f.op !== 'update') continue
      if (f.epoch !== state.epoch || f.version !== state.version + 1) throw new Error(`presence update ${f.version} after ${state.version}`)
      state.version = f.version
      state.connections = f.data.connections
      if (f.data.kind === 'join') state.members.add(f.data.user)
      if (f.data.kind === 'leave') state.members.delete(f.data.user)
    }
    return { connections: state.connections, users: [...state.members].sort() }
  }

  test('a node cut off from NATS drops nobody; after NATS is back, every watcher and node equals the truth', async () => {
    const channel = 'chat:outage'
    const watchers = [await client(0, undefined, `presence:${channel}`), await client(1, undefined, `presence:${channel}`)]
    const ann = await client(0, 'ann', channel)
    await client(1, 'bob', channel)
    await client(1, 'ann', channel) // ann on both nodes
    const seen = async () => {
      const out: unknown[] = watchers.map((w) => held(w, `presence:${channel}`))
      for (const port of ports) {
        const r = (await (await fetch(`http://127.0.0.1:${port}/v1/presence/${channel}`)).json()) as any
        out.push({ connections: r.connections, users: r.members.map((m: any) => m.user) })
      }
      return out.map((x) => JSON.stringify(x))
    }
    const settle = async (truth: unknown, ms: number) => {
      const want = JSON.stringify(truth)
      try {
        await until('every watcher and node equals the truth', async () => (await seen()).every((s) => s === want), ms, 100)
      } catch (err) {
        console.log(want, await seen())
        throw err
      }
    }
    await settle({ connections: 3, users: ['ann', 'bob'] }, 5_000)

    await d.nats.kill()
    // Cut off: A's ann leaves A (she is still on B), cy comes on A, dee on B.
    ann.close()
    await client(0, 'cy', channel)
    const dee = await client(1, 'dee', channel)
    // Past the TTL: a node cut off from NATS cannot tell whether the others died; it keeps what
    // it knew of them (their users are still connected) and counts its own changes. Before, each
    // node dropped the other: every user of the other node left (`node_lost`) and joined again
    // once NATS was back, though nobody had gone anywhere.
    await Bun.sleep(TTL_MS + 1500)
    expect(held(watchers[0], `presence:${channel}`).users).toEqual(['ann', 'bob', 'cy'])
    expect(held(watchers[1], `presence:${channel}`).users).toEqual(['ann', 'bob', 'dee'])
    const leaves = () => watchers.flatMap((w) => w.frames.filter((f) => f.op === 'update' && f.data.kind === 'leave').map((f) => `${f.data.user}:${f.data.reason}`))
    expect(leaves()).toEqual([])

    await d.nats.start()
    await settle({ connections: 4, users: ['ann', 'bob', 'cy', 'dee'] }, 15_000)
    await Bun.sleep(GRACE_MS + 1000)
    await settle({ connections: 4, users: ['ann', 'bob', 'cy', 'dee'] }, 100)
    // ann was on B all along: nobody left.
    expect(leaves()).toEqual([])

    // A cut shorter than the TTL: nobody is dropped; what changed meanwhile arrives after.
    const leavesBefore = watchers.map((w) => w.frames.filter((f) => f.op === 'update' && f.data.kind === 'leave').length)
    await d.nats.kill()
    dee.close()
    await client(0, 'eve', channel)
    await Bun.sleep(500)
    await d.nats.start()
    await settle({ connections: 4, users: ['ann', 'bob', 'cy', 'eve'] }, 15_000)
    // dee alone left (disconnected, after the grace): nobody was counted lost.
    expect(watchers.map((w) => w.frames.filter((f) => f.op === 'update' && f.data.kind === 'leave').slice(leavesBefore[watchers.indexOf(w)]).map((f) => `${f.data.user}:${f.data.reason}`))).toEqual([['dee:disconnected'], ['dee:disconnected']])
  }, 60_000)
})
