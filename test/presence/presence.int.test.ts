import { describe, expect, test } from 'bun:test'
import { mintUserToken } from '../../api/src/auth/mint'
import { until, useApiNodes, type WsClient } from '../e2e/harness'

const TTL_MS = 3000
const GRACE_MS = 1500

/**
 * Presence across two real API nodes: counts and members agree everywhere; joins and leaves reach
 * `presence:` subscribers on every node; a reload within the grace is no leave; a node killed with
 * SIGKILL takes its users with it (`node_lost`) within the TTL plus 2 s; a big channel sends counts
 * only, at most one per interval.
 */
describe('presence across API nodes', () => {
  const nodes = useApiNodes(['a', 'b'], {
    HOST: '127.0.0.1',
    FANFARE_PRESENCE_TTL_MS: String(TTL_MS),
    FANFARE_PRESENCE_GRACE_MS: String(GRACE_MS),
    FANFARE_PRESENCE_INTERVAL_MS: '200',
    FANFARE_PRESENCE_MAX_MEMBERS: '3',
  })
  const { ports, procs } = nodes

  const A = 0
  const B = 1
  const token = (sub: string) => mintUserToken(nodes.env.vars.FANFARE_JWT_SECRET, { sub, name: sub.toUpperCase() })
  /** A client on a node, as a user (or anonymous), subscribed to `channels`. */
  async function client(node: number, sub: string | undefined, channels: string[]) {
    const c = await nodes.open(node, sub ? `token=${await token(sub)}` : undefined)
    for (const channel of channels) c.send({ op: 'subscribe', ref: channel, channel })
    await until(`${sub ?? 'anonymous'} subscribed`, () => channels.every((ch) => c.frames.some((f) => f.channel === ch && f.op === 'snapshot')))
    return c
  }
  /** What a presence subscriber holds: its snapshot with every update applied, checked version by version. */
  function held(c: WsClient, channel: string) {
    const state = { connections: 0, users: 0, members: undefined as Map<string, string | undefined> | undefined, version: -1, resyncs: 0 }
    for (const f of c.frames.filter((x) => x.channel === channel)) {
      if (f.op === 'snapshot') {
        if (f.resync) state.resyncs++
        Object.assign(state, { connections: f.data.connections, users: f.data.users, version: f.version })
        state.members = f.data.members ? new Map(f.data.members.map((m: any) => [m.user, m.name])) : undefined
        continue
      }
      if (f.op !== 'update') continue
      if (f.version !== state.version + 1) throw new Error(`presence update ${f.version} after ${state.version}`)
      state.version = f.version
      state.connections = f.data.connections
      state.users = f.data.users
      if (f.data.kind === 'join') state.members?.set(f.data.user, f.data.name)
      if (f.data.kind === 'leave') state.members?.delete(f.data.user)
    }
    return state
  }
  const rest = async (node: number, channel: string) => (await fetch(`http://127.0.0.1:${ports[node]}/v1/presence/${channel}`)).json() as Promise<any>
  const members = (s: { members?: Map<string, string | undefined> }) => [...(s.members?.keys() ?? [])].sort()

  test('users and connections on both nodes are counted once everywhere; joins and leaves reach watchers on every node', async () => {
    const watchA = await client(A, undefined, ['presence:chat:lobby'])
    const watchB = await client(B, 'wendy', ['presence:chat:lobby'])
    await client(A, 'ann', ['chat:lobby'])
    await client(A, 'ann', ['chat:lobby']) // a second tab: one user, two connections
    await client(B, 'bob', ['chat:lobby'])
    await client(A, undefined, ['chat:lobby'])
    await client(B, undefined, ['chat:lobby'])
    const expected = { connections: 5, users: 2, members: ['ann', 'bob'] }
    for (const w of [watchA, watchB]) {
      await until('watcher converges', () => {
        const s = held(w, 'presence:chat:lobby')
        return s.connections === 5 && s.users === 2 && members(s).join() === 'ann,bob'
      }, 5000)
    }
    for (const node of [A, B]) {
      const r = await rest(node, 'chat:lobby')
      expect({ connections: r.connections, users: r.users, members: r.members.map((m: any) => m.user) }).toEqual(expected)
      expect(r.members.find((m: any) => m.user === 'ann').name).toBe('ANN')
    }

    const carl = await client(B, 'carl', ['chat:lobby'])
    await until('carl joins on A', () => watchA.frames.some((f) => f.data?.kind === 'join' && f.data.user === 'carl'), 3000)
    carl.send({ op: 'unsubscribe', ref: 'u', channel: 'chat:lobby' })
    const leave = await until('carl leaves on A', () => watchA.frames.find((f) => f.data?.kind === 'leave' && f.data.user === 'carl'), 3000)
    expect(leave.data).toMatchObject({ reason: 'left', users: 2 })
  })

  test('a viewer who signs in with an auth frame after subscribing is present as that user, and leaves no ghost connection behind', async () => {
    const watch = await client(B, undefined, ['presence:chat:signin'])
    // Subscribed while anonymous (a browser opens the socket, then sends its token in a frame).
    const c = await client(A, undefined, ['chat:signin'])
    await until('one anonymous connection', () => held(watch, 'presence:chat:signin').connections === 1, 3000)
    c.send({ op: 'auth', ref: 'a', token: await token('sid') })
    await c.reply('a')
    await until('sid present, as the one connection', () => {
      const s = held(watch, 'presence:chat:signin')
      return members(s).includes('sid') && s.connections === 1 && s.users === 1
    }, 3000)
    // Left at once: nothing stays counted (before, the anonymous connection stayed for good).
    c.send({ op: 'unsubscribe', ref: 'u', channel: 'chat:signin' })
    await until('nobody left', () => {
      const s = held(watch, 'presence:chat:signin')
      return s.connections === 0 && s.users === 0
    }, 3000)
    for (const node of [A, B]) expect(await rest(node, 'chat:signin')).toMatchObject({ connections: 0, users: 0, members: [] })
    // The same over a close: gone after the grace.
    const d = await client(A, undefined, ['chat:signin'])
    d.send({ op: 'auth', ref: 'a', token: await token('sue') })
    await d.reply('a')
    await until('sue present', () => members(held(watch, 'presence:chat:signin')).includes('sue'), 3000)
    d.close()
    await until('sue gone, no ghost', () => {
      const s = held(watch, 'presence:chat:signin')
      return s.connections === 0 && s.users === 0
    }, GRACE_MS + 3000)
  })

  test('a reload within the grace, even onto the other node, is no leave and no join', async () => {
    const watch = await client(A, undefined, ['presence:chat:reload'])
    const first = await client(A, 'dave', ['chat:reload'])
    await until('dave present', () => members(held(watch, 'presence:chat:reload')).includes('dave'), 3000)
    const framesBefore = watch.frames.length
    first.close()
    await Bun.sleep(200)
    await client(B, 'dave', ['chat:reload'])
    await Bun.sleep(GRACE_MS + 1000)
    const after = watch.frames.slice(framesBefore)
    expect(after.filter((f) => f.data?.kind === 'join' || f.data?.kind === 'leave')).toEqual([])
    expect(held(watch, 'presence:chat:reload')).toMatchObject({ users: 1, connections: 1 })
  })

  test('a user who reconnected onto the other node within the grace and then unsubscribes leaves at once as left, not after the grace as disconnected', async () => {
    const watch = await client(A, undefined, ['presence:chat:hop'])
    const first = await client(A, 'hal', ['chat:hop'])
    await until('hal present', () => members(held(watch, 'presence:chat:hop')).includes('hal'), 3000)
    first.close()
    await Bun.sleep(200)
    const second = await client(B, 'hal', ['chat:hop'])
    await Bun.sleep(300)
    second.send({ op: 'unsubscribe', ref: 'u', channel: 'chat:hop' })
    await second.reply('u')
    const since = Date.now()
    const leave = await until('hal leaves', () => watch.frames.find((f) => f.channel === 'presence:chat:hop' && f.data?.kind === 'leave'), GRACE_MS + 3000)
    expect(leave.data).toMatchObject({ user: 'hal', reason: 'left', users: 0, connections: 0 })
    expect(Date.now() - since).toBeLessThan(GRACE_MS / 2)
    // The other node hears of it within an update interval (100 ms), not after the grace.
    await until('gone on both nodes', async () => (await rest(A, 'chat:hop')).users === 0 && (await rest(B, 'chat:hop')).users === 0, GRACE_MS / 2)
  })

  test('a big channel gets counts only, at most one per interval, whatever the churn', async () => {
    const watch = await client(A, undefined, ['presence:chat:big'])
    const joined = []
    for (let i = 0; i < 6; i++) joined.push(await client(i % 2, `fan${i}`, ['chat:big']))
    await until('6 users', () => held(watch, 'presence:chat:big').users === 6, 5000)
    const s = held(watch, 'presence:chat:big')
    expect(s.members).toBeUndefined()
    // Past the limit (3) the watcher got a fresh snapshot without members, then counts only...
    const mine = watch.frames.map((f, i) => ({ f, at: watch.times[i] })).filter(({ f }) => f.channel === 'presence:chat:big')
    const crossed = mine.map(({ f }) => f.op).lastIndexOf('snapshot')
    expect(mine[crossed].f).toMatchObject({ resync: true, data: { users: 4 } })
    expect(mine[crossed].f.data.members).toBeUndefined()
    const after = mine.slice(crossed + 1)
    expect(after.every(({ f }) => f.op === 'update' && f.data.kind === 'count')).toBe(true)
    // ...at most one per 200 ms interval, however many joined meanwhile.
    for (let i = 1; i < after.length; i++) expect(after[i].at - after[i - 1].at).toBeGreaterThan(150)
  })

  test('a user toggling a channel across the member limit costs its presence subscribers at most a snapshot per interval, and they end equal to the cluster', async () => {
    const watch = await client(A, undefined, ['presence:chat:edge'])
    for (const sub of ['e1', 'e2', 'e3']) await client(A, sub, ['chat:edge']) // the limit (3): members listed
    await until('three members', () => held(watch, 'presence:chat:edge').users === 3, 3000)
    const from = watch.frames.length
    // A fourth user subscribes and unsubscribes again and again: every time across the limit. A
    // snapshot lists every member (up to FANFARE_PRESENCE_MAX_MEMBERS of them) and goes to every
    // presence subscriber, so one toggling socket must not make one per toggle.
    const toggler = await nodes.open(A, `token=${await token('tog')}`)
    const started = Date.now()
    for (let i = 0; i < 30; i++) {
      toggler.send({ op: 'subscribe', ref: `s${i}`, channel: 'chat:edge' })
      await until('subscribed', () => toggler.of('chat:edge').length === i + 1)
      await Bun.sleep(5)
      toggler.send({ op: 'unsubscribe', ref: `u${i}`, channel: 'chat:edge' })
      await toggler.reply(`u${i}`)
    }
    const took = Date.now() - started
    await Bun.sleep(600)
    const snapshots = watch.frames.slice(from).filter((f) => f.channel === 'presence:chat:edge' && f.op === 'snapshot').length
    // One per 200 ms interval (and one at once): the storm took `took` ms.
    expect(snapshots).toBeLessThanOrEqual(Math.ceil(took / 200) + 3)
    const s = held(watch, 'presence:chat:edge')
    expect({ users: s.users, members: members(s) }).toEqual({ users: 3, members: ['e1', 'e2', 'e3'] })
  })

  test("a node killed with SIGKILL: its users leave everywhere with node_lost within the TTL plus 2 s", async () => {
    const watch = await client(A, undefined, ['presence:chat:crash'])
    await client(A, 'stay', ['chat:crash'])
    await client(B, 'gone', ['chat:crash'])
    await client(B, 'stay', ['chat:crash']) // also on A: stays
    await until('both present', () => members(held(watch, 'presence:chat:crash')).join() === 'gone,stay', 5000)
    const killedAt = Date.now()
    await procs[B].stop('SIGKILL')
    const leave = await until('gone leaves', () => watch.frames.find((f) => f.channel === 'presence:chat:crash' && f.data?.kind === 'leave'), TTL_MS + 5000)
    expect(Date.now() - killedAt).toBeLessThan(TTL_MS + 2000)
    expect(leave.data).toMatchObject({ user: 'gone', reason: 'node_lost', users: 1, connections: 1 })
    expect(members(held(watch, 'presence:chat:crash'))).toEqual(['stay'])
    const r = await rest(A, 'chat:crash')
    expect({ connections: r.connections, users: r.users }).toEqual({ connections: 1, users: 1 })
  })
})
