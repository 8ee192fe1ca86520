import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { until, WsClient } from '../e2e/harness'
import { startDeployment, type Deployment } from '../sdk/deployment'

const MESSAGES = 40

/**
 * Field notes, complaint 7: "one bad subscriber or authorization error stopping delivery for
 * everyone". Two real API nodes and a worker; members of one room, on both nodes, follow it while
 * the other subscribers of that room misbehave or lose their right to it: one sends garbage frames
 * all along, an anonymous viewer is dropped when the room is made private, a member is revoked, a
 * stranger's subscribe is refused, and one post in the middle is a bad event (an id another
 * publisher already used in the room: a dead letter). Each member must still get every message,
 * in order, version after version, with no resync; each bad neighbour gets its own clear answer.
 */
describe('bad neighbours in a channel', () => {
  let d: Deployment
  const opened: WsClient[] = []
  beforeAll(async () => {
    d = await startDeployment({ apis: 2, workers: 1 })
  }, 60_000)
  afterAll(async () => {
    for (const c of opened) c.close()
    await d?.stop()
  })

  const ws = (node: number, token?: string) => `${d.urls[node].replace('http', 'ws')}/v1/ws${token ? `?token=${encodeURIComponent(token)}` : ''}`
  async function subscriber(node: number, token: string | undefined, channel: string) {
    const c = await WsClient.open(ws(node, token))
    opened.push(c)
    c.send({ op: 'subscribe', ref: 'sub', channel })
    await until('snapshot', () => c.frames.find((f) => f.channel === channel && f.op === 'snapshot'))
    return c
  }
  /** The texts a member's frames carry after its snapshot, each update exactly the next version. */
  function followed(c: WsClient, channel: string): string[] {
    const own = c.of(channel)
    expect(own[0].op).toBe('snapshot')
    expect(own.filter((f) => f.op === 'snapshot').length).toBe(1) // no resync
    own.slice(1).forEach((f, i) => expect(f.version).toBe(own[0].version + i + 1))
    return own.slice(1).filter((f) => f.data.kind === 'posted').map((f) => f.data.message.text)
  }

  test('members on both nodes get every message in order while others in the channel fail, are dropped, refused or revoked', async () => {
    const room = `iso_${Math.random().toString(36).slice(2, 8)}`
    const channel = `chat:${room}`
    const claim = { channels: [channel] }
    const admin = { token: d.env.vars.FANFARE_ADMIN_TOKEN }
    const poster = await d.token('m1', claim)
    const members = [await subscriber(0, poster, channel), await subscriber(1, await d.token('m2', claim), channel)]
    const noisy = await subscriber(1, await d.token('m3', claim), channel)
    const viewer = await subscriber(0, undefined, channel)
    const doomed = await subscriber(0, await d.token('r1', claim), channel)

    // Garbage on the same channel's connection all along: bad JSON, unknown ops, a binary-looking
    // string, a publish of nonsense.
    let garbage = 0
    const junk = ['{not json', '{"op":"fly"}', '42', '{"op":"subscribe"}', '{"op":"publish","ref":"j","event":{"type":"nope"}}']
    const noise = setInterval(() => noisy.send(junk[garbage++ % junk.length]), 5)

    let stranger: WsClient | undefined
    try {
      for (let i = 0; i < MESSAGES; i++) {
        if (i === 10) expect((await d.call('PUT', `/admin/rooms/${room}`, { visibility: 'private' }, admin)).status).toBe(200)
        if (i === 15) expect((await d.call('POST', '/admin/users/r1/revoke', undefined, { ...admin, node: 1 })).status).toBe(200)
        if (i === 20) {
          stranger = await WsClient.open(ws(1, await d.token('s1')))
          opened.push(stranger)
          stranger.send({ op: 'subscribe', ref: 'sub', channel })
        }
        if (i === 25) {
          // Another publisher (a key, on behalf of m1) reuses the id m1 gave message 5 in this room:
          // refused by the projection and kept as a dead letter, never shown, never blocking.
          const clash = { type: 'chat.message.posted', id: `${room}-5`, data: { room, user: 'm1', text: 'clash' } }
          expect((await d.call('POST', '/v1/events', clash)).status).toBe(202)
        }
        const post = { type: 'chat.message.posted', id: `${room}-${i}`, data: { room, user: 'm1', text: `m${i}` } }
        const res = await d.call('POST', '/v1/events', post, { node: i % 2, token: poster })
        expect(res.status).toBe(202)
      }
      const want = Array.from({ length: MESSAGES }, (_, i) => `m${i}`)
      await until('members have every message', () => [...members, noisy].every((c) => c.of(channel).length > MESSAGES), 30_000)
      for (const c of [...members, noisy]) expect(followed(c, channel)).toEqual(want)
      expect(garbage).toBeGreaterThan(20)
      expect(noisy.closed).toBeUndefined()
      expect(noisy.frames.filter((f) => f.op === 'error').length).toBeGreaterThan(0)
    } finally {
      clearInterval(noise)
    }

    // Each bad neighbour got its own answer, and only that.
    expect(viewer.frames.find((f) => f.op === 'unsubscribed' && f.channel === channel)).toMatchObject({ reason: 'forbidden' })
    expect(viewer.closed).toBeUndefined()
    await until('revoked socket closed', () => doomed.closed, 5_000)
    expect(doomed.closed).toEqual({ code: 4003, reason: 'revoked' })
    expect((await stranger!.reply('sub')).error.code).toBe('forbidden')
    expect(stranger!.of(channel)).toEqual([])
    const dead = await until('clash dead-lettered', async () => {
      const list = (await d.call('GET', '/admin/dead-letters?limit=100', undefined, admin)).json.deadLetters as any[]
      return list.find((x) => x.eventId === `${room}-5`)
    })
    expect(dead.reason).toContain('another publisher')
    const rest = (await d.call('GET', `/v1/rooms/${room}/messages?limit=50`, undefined, { token: poster })).json
    expect(rest.messages.map((m: any) => m.text).reverse()).toEqual(Array.from({ length: MESSAGES }, (_, i) => `m${i}`))
  }, 90_000)
})
