import { describe, expect, test } from 'bun:test'
import { mintUserToken } from '../../api/src/auth/mint'
import { until, useApiNodes, type WsClient } from '../e2e/harness'

const GRACE_MS = 4000

/**
 * Revocation is not a flaky network: a user whose credential is revoked (their sockets close with
 * 4003 on every node, see test/revocation/) leaves presence at once, with reason `revoked`, seen by
 * presence subscribers on every node. A user with another, unrevoked token still connected stays.
 * Before, they stayed present for the grace (FANFARE_PRESENCE_GRACE_MS) and left as
 * `disconnected`. Two real API nodes (presence is shared between processes).
 */
describe('presence of a revoked user', () => {
  const nodes = useApiNodes(['a', 'b'], { HOST: '127.0.0.1', FANFARE_PRESENCE_GRACE_MS: String(GRACE_MS), FANFARE_PRESENCE_INTERVAL_MS: '200' })
  const { ports } = nodes

  const A = 0
  const B = 1
  const mint = (sub: string, jti?: string) => mintUserToken(nodes.env.vars.FANFARE_JWT_SECRET, { sub, issuedAt: Math.floor(Date.now() / 1000) - 10, ...(jti ? { jti } : {}) })
  async function client(node: number, token: string, channel: string) {
    const c = await nodes.open(node, `token=${token}`)
    c.send({ op: 'subscribe', ref: channel, channel })
    await until(`subscribed to ${channel}`, () => c.frames.some((f) => f.channel === channel && f.op === 'snapshot'))
    return c
  }
  const admin = async (path: string, body?: unknown) =>
    (
      await fetch(`http://127.0.0.1:${ports[A]}${path}`, {
        method: 'POST',
        headers: { authorization: `Bearer ${nodes.env.vars.FANFARE_ADMIN_TOKEN}`, ...(body ? { 'content-type': 'application/json' } : {}) },
        body: body ? JSON.stringify(body) : undefined,
      })
    ).status
  const rest = async (node: number, channel: string) => (await fetch(`http://127.0.0.1:${ports[node]}/v1/presence/${channel}`)).json() as Promise<any>
  const changes = (c: WsClient, channel: string) =>
    c.frames.filter((f) => f.channel === channel && f.op === 'update' && f.data.kind !== 'count').map((f) => `${f.data.kind}:${f.data.user}${f.data.reason ? `:${f.data.reason}` : ''}`)

  test('a revoked user leaves at once as `revoked` on every node; a user whose other token is still open stays', async () => {
    const channel = 'chat:revoked'
    const watchers = [await client(A, await mint('wendy'), `presence:${channel}`), await client(B, await mint('walt'), `presence:${channel}`)]
    const erin = await mint('erin')
    const erins = [await client(A, erin, channel), await client(B, erin, channel)]
    const phone = await mint('fay', 'fay-phone')
    const fays = [await client(A, phone, channel), await client(B, await mint('fay', 'fay-laptop'), channel)]
    for (const w of watchers) await until('erin and fay present', () => changes(w, `presence:${channel}`).length === 2, 5_000)
    // Every node counts all four sockets (a node hears the other's changes within 100 ms).
    await until('four connections on both nodes', async () => (await rest(A, channel)).connections === 4 && (await rest(B, channel)).connections === 4, 3_000)

    expect(await admin('/admin/users/erin/revoke')).toBe(200)
    const exp = JSON.parse(Buffer.from(phone.split('.')[1], 'base64url').toString()).exp
    expect(await admin('/admin/tokens/revoke', { jti: 'fay-phone', exp })).toBe(200)
    const since = Date.now()
    await until('revoked sockets closed', () => erins.every((c) => c.closed) && fays[0].closed !== undefined, 5_000)
    for (const w of watchers) {
      const leave = await until('erin leaves', () => w.frames.find((f) => f.channel === `presence:${channel}` && f.data?.kind === 'leave'), GRACE_MS + 3_000, 10)
      expect(leave.data).toMatchObject({ user: 'erin', reason: 'revoked' })
    }
    // At once: well within the grace.
    expect(Date.now() - since).toBeLessThan(1_500)
    await until('one connection left', async () => (await rest(A, channel)).connections === 1 && (await rest(B, channel)).connections === 1, 3_000)
    for (const node of [A, B]) expect((await rest(node, channel)).members).toEqual([{ user: 'fay' }])
    // Past the grace: no late leave of either, and fay never left.
    await Bun.sleep(GRACE_MS + 500)
    for (const w of watchers) expect(changes(w, `presence:${channel}`)).toEqual(['join:erin', 'join:fay', 'leave:erin:revoked'])
    expect(fays[1].closed).toBeUndefined()
  }, 40_000)

  test('a user whose socket already closed (lingering within the grace on node B) leaves at once as `revoked` when revoked through node A (a user revocation, or their token by jti and user)', async () => {
    const channel = 'chat:lingering'
    const watcher = await client(A, await mint('wendy'), `presence:${channel}`)
    const tab = await mint('hal', 'hal-tab')
    const gone = [await client(B, await mint('gil'), channel), await client(B, tab, channel)]
    await until('gil and hal present', () => changes(watcher, `presence:${channel}`).length === 2, 5_000)
    for (const c of gone) c.close()
    await until('their sockets closed', () => gone.every((c) => c.closed))
    // Within the grace they are still present (a reload may come back).
    expect((await rest(A, channel)).members.map((m: any) => m.user).sort()).toEqual(['gil', 'hal'])

    const since = Date.now()
    expect(await admin('/admin/users/gil/revoke')).toBe(200)
    const exp = JSON.parse(Buffer.from(tab.split('.')[1], 'base64url').toString()).exp
    expect(await admin('/admin/tokens/revoke', { jti: 'hal-tab', exp, user: 'hal' })).toBe(200)
    await until('both left', () => changes(watcher, `presence:${channel}`).length === 4, GRACE_MS + 3_000, 10)
    // At once: well within the grace, and told as revoked, not disconnected.
    expect(Date.now() - since).toBeLessThan(1_500)
    expect(changes(watcher, `presence:${channel}`).sort()).toEqual(['join:gil', 'join:hal', 'leave:gil:revoked', 'leave:hal:revoked'])
  }, 40_000)
})
