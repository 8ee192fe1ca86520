import { describe, expect, test } from 'bun:test'
import { mintUserToken } from '../../api/src/auth/mint'
import { until, useApiNodes, type WsClient } from '../e2e/harness'

const GRACE_MS = 3000

/**
 * A present user whose display name changes (they reload with a token carrying another `name`
 * claim, or open a second tab with one) is told to presence subscribers on every node as an
 * `update` of that member, in order with joins and leaves. Before, the new name reached the nodes'
 * views silently: subscribers kept showing the old name until their next snapshot. Two real API
 * nodes (presence is shared between processes).
 */
describe('presence: a present user renamed', () => {
  const nodes = useApiNodes(['a', 'b'], { HOST: '127.0.0.1', FANFARE_PRESENCE_GRACE_MS: String(GRACE_MS), FANFARE_PRESENCE_INTERVAL_MS: '200' })
  const { ports } = nodes

  const A = 0
  const B = 1
  async function client(node: number, sub: string | undefined, name: string | undefined, channel: string) {
    const token = sub ? await mintUserToken(nodes.env.vars.FANFARE_JWT_SECRET, { sub, ...(name ? { name } : {}) }) : undefined
    const c = await nodes.open(node, token ? `token=${token}` : undefined)
    c.send({ op: 'subscribe', ref: channel, channel })
    await until(`subscribed to ${channel}`, () => c.frames.some((f) => f.channel === channel && f.op === 'snapshot'))
    return c
  }
  /** The members a presence subscriber holds (user -> name): its snapshot with every update applied, version by version. */
  function held(c: WsClient, channel: string) {
    let members = new Map<string, string | undefined>()
    let version = -1
    for (const f of c.frames.filter((x) => x.channel === channel)) {
      if (f.op === 'snapshot') {
        members = new Map(f.data.members.map((m: any) => [m.user, m.name]))
        version = f.version
        continue
      }
      if (f.op !== 'update') continue
      if (f.version !== version + 1) throw new Error(`presence update ${f.version} after ${version}`)
      version = f.version
      if (f.data.kind === 'join' || f.data.kind === 'update') members.set(f.data.user, f.data.name)
      if (f.data.kind === 'leave') members.delete(f.data.user)
    }
    return Object.fromEntries(members)
  }
  const rest = async (node: number, channel: string) => (await fetch(`http://127.0.0.1:${ports[node]}/v1/presence/${channel}`)).json() as Promise<any>
  const told = (c: WsClient, channel: string) =>
    c.frames.filter((f) => f.channel === channel && f.op === 'update' && f.data.kind !== 'count').map((f) => `${f.data.kind}:${f.data.user}:${f.data.name ?? f.data.reason ?? ''}`)

  test('a reload with another name, then a second tab with another on the other node: watchers on both nodes see each new name at once, in order', async () => {
    const channel = 'chat:rename'
    const presence = `presence:${channel}`
    const watchers = [await client(A, 'wendy', undefined, presence), await client(B, undefined, undefined, presence)]
    const first = await client(B, 'ann', 'Ann', channel)
    for (const w of watchers) await until('ann present as Ann', () => held(w, presence).ann === 'Ann', 3000)

    // A reload on the same node with a token carrying another name, within the grace.
    first.close()
    await Bun.sleep(200)
    await client(B, 'ann', 'Annie', channel)
    for (const w of watchers) await until('watcher shows Annie', () => held(w, presence).ann === 'Annie', 2000)

    // A second tab on the other node with yet another name (the first tab stays).
    await client(A, 'ann', 'Anna', channel)
    for (const w of watchers) await until('watcher shows Anna', () => held(w, presence).ann === 'Anna', 2000)

    // Past the grace of the closed socket: no leave, no join, only the renames, on both nodes.
    await Bun.sleep(GRACE_MS + 500)
    for (const w of watchers) expect(told(w, presence)).toEqual(['join:ann:Ann', 'update:ann:Annie', 'update:ann:Anna'])
    for (const node of [A, B]) expect((await rest(node, channel)).members).toEqual([{ user: 'ann', name: 'Anna' }])
  }, 30_000)
})
