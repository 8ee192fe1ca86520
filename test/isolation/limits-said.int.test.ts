import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { createClient, type Client, type FanfareError } from '../../client/src'
import { until, WsClient } from '../e2e/harness'
import { startDeployment, type Deployment } from '../sdk/deployment'

/**
 * Field notes, complaint 9: "per-tenant channel limits hit without warning". A real API node and
 * worker: a client past the channel limit of a connection (100) is told which subscription was
 * refused and why, through the SDK, while the ones it holds keep their updates; a user past the
 * connection limit is refused with the reason. The operator sees both in the node's metrics.
 */
describe('limits are said, to the client and to the operator', () => {
  let d: Deployment
  const clients: Client[] = []
  beforeAll(async () => {
    d = await startDeployment({ apis: 1, workers: 1, vars: { FANFARE_MAX_CONNECTIONS_PER_USER: '2' } })
  }, 60_000)
  afterAll(async () => {
    for (const c of clients) c.close()
    await d?.stop()
  })

  /** Refusals of `what` counted against `caller`'s limits. */
  const metric = async (what: string, caller: string) => {
    const text: string = await (await fetch(`${d.urls[0]}/metrics`, { headers: { authorization: `Bearer ${d.env.vars.FANFARE_ADMIN_TOKEN}` } })).text()
    const line = text.split('\n').find((l) => l.startsWith(`fanfare_rate_limited_total{what="${what}",caller="${caller}"}`))
    return line ? Number(line.split(' ').at(-1)) : 0
  }

  test('the 101st channel of a connection fails with too_many_subscriptions; the 100 it holds keep their updates; counted', async () => {
    const tag = Math.random().toString(36).slice(2, 8)
    const client = createClient({ urls: d.urls, token: await d.token('lim') })
    clients.push(client)
    const subs = Array.from({ length: 101 }, (_, i) => client.subscribe(`chat:${tag}_${i}`))
    const errors: FanfareError[] = []
    for (const s of subs) client.subscribe(s.channel, { onError: (e) => void errors.push(e) })
    await until('100 live, one failed', () => subs.filter((s) => s.status === 'live').length === 100 && subs.some((s) => s.status === 'failed'), 30_000)
    const failed = subs.filter((s) => s.status === 'failed')
    expect(failed.length).toBe(1)
    expect(errors.map((e) => [e.code, e.message])).toEqual([['too_many_subscriptions', 'at most 100 channels per connection']])
    // The channels it holds still get their updates: the first and the last admitted.
    const live = subs.filter((s) => s.status === 'live')
    for (const s of [live[0], live[99]]) {
      const room = s.channel.slice('chat:'.length)
      expect((await d.call('POST', '/v1/events', { type: 'chat.message.posted', data: { room, user: 'lim', text: `to ${room}` } })).status).toBe(202)
    }
    await until('updates on held channels', () => [live[0], live[99]].every((s: any) => s.state?.messages.length === 1), 20_000)
    expect(await metric('ws_channels', 'user')).toBe(1)
  }, 60_000)

  test('publishes past a user\'s rate are each answered rate_limited, and each counted', async () => {
    const c = await WsClient.open(`${d.urls[0].replace('http', 'ws')}/v1/ws?token=${encodeURIComponent(await d.token('fast'))}`)
    const before = await metric('ws_publish', 'user')
    // Past the burst (50): the first refused, and those pipelined behind it, waiting for it to go first.
    for (let i = 0; i < 80; i++) c.send({ op: 'publish', ref: `p${i}`, event: { type: 'chat.message.posted', data: { room: 'fast', text: `m${i}` } } })
    await until('every publish answered', () => c.frames.filter((f) => f.ref?.startsWith('p')).length === 80, 15_000)
    const refused = c.frames.filter((f) => f.op === 'error' && f.error.code === 'rate_limited').length
    expect(refused).toBeGreaterThan(1)
    expect((await metric('ws_publish', 'user')) - before).toBe(refused)
    c.close()
  })

  test('a user past the connection limit is refused with the reason (429 before the upgrade); counted', async () => {
    const token = await d.token('many')
    const ws = `${d.urls[0].replace('http', 'ws')}/v1/ws?token=${encodeURIComponent(token)}`
    const held = [await WsClient.open(ws), await WsClient.open(ws)]
    const res = await fetch(`${d.urls[0]}/v1/ws?token=${encodeURIComponent(token)}`, {
      headers: { upgrade: 'websocket', connection: 'Upgrade', 'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==', 'sec-websocket-version': '13' },
    })
    expect(res.status).toBe(429)
    expect(((await res.json()) as any).error).toMatchObject({ code: 'too_many_connections', message: 'at most 2 WebSockets per user' })
    expect(await metric('ws_connections', 'user')).toBe(1)
    for (const c of held) c.close()
  })
})
