import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { createClient, type Client } from '../../client/src'
import { until } from '../e2e/harness'
import { startDeployment, type Deployment } from './deployment'

const PLAYERS = 30
const MESSAGES = 150

/**
 * The node a client is on is SIGKILLed while scores and chat flow. The client moves to the other
 * node by itself, resumes its channels there (every update continues the one before: no gap, no
 * repeat), its state ends equal to the read models, and the chat it published throughout, during
 * the outage too, is stored exactly once, in order.
 */
describe('client SDK: the API node dies under it', () => {
  let d: Deployment
  let client: Client | undefined
  beforeAll(async () => {
    d = await startDeployment({ apis: 2, workers: 2, vars: { FANFARE_PARTITIONS: '4', FANFARE_LEASE_TTL_MS: '3000' } })
  }, 60_000)
  afterAll(async () => {
    client?.close()
    await d?.stop()
  })

  test('SIGKILL of its node: resumed elsewhere, state equals the read model, publishes stored once', async () => {
    const board = 'fo_board'
    const room = 'fo_room'
    client = createClient({ urls: d.urls, token: () => d.token('ann'), backoff: { minMs: 300, maxMs: 1000 } })
    const c = client
    /** Every frame applied, per channel: updates (from, version) and snapshots that replaced the state. */
    const log = new Map<string, string[]>()
    const record = (channel: string) => ({
      onUpdate: (_: unknown, i: { from: number; version: number }) => void (log.get(channel) ?? log.set(channel, []).get(channel)!).push(`u ${i.from} ${i.version}`),
      onResync: () => void (log.get(channel) ?? log.set(channel, []).get(channel)!).push('resync'),
    })
    const boardSub = c.subscribe(`leaderboard:${board}`, record('board'))
    const roomSub = c.subscribe(`chat:${room}`, record('room'))
    await until('live', () => boardSub.status === 'live' && roomSub.status === 'live')
    const first = d.urls.findIndex((u) => c.status.state === 'connected' && c.status.url.startsWith(u.replace('http', 'ws')))
    expect(first).toBeGreaterThanOrEqual(0)
    const other = 1 - first
    const nodesSeen = new Set<string>()
    c.on('status', (s) => void (s.state === 'connected' && nodesSeen.add(s.url)))

    // A game server sends scores to the node that stays up; the user chats all along.
    let sending = true
    const scores = (async () => {
      for (let n = 0; sending; n++) {
        const events = Array.from({ length: 10 }, (_, k) => ({ type: 'score.submitted', data: { board, player: `p${(n * 10 + k) % PLAYERS}`, score: (n * 10 + k) % 17 } }))
        const res = await d.call('POST', '/v1/events', { events }, { node: other })
        if (res.status !== 202) throw new Error(`ingest answered ${res.status}`)
        await Bun.sleep(40)
      }
    })()
    const published: Promise<{ duplicate: boolean }>[] = []
    const sent: string[] = []
    const say = (text: string) => {
      sent.push(text)
      published.push(c.publish({ type: 'chat.message.posted', data: { room, user: 'ann', text } }))
    }
    const chat = (async () => {
      for (let i = 0; i < MESSAGES; i++) {
        say(`m${i}`)
        await Bun.sleep(20)
      }
    })()

    await Bun.sleep(1000)
    await d.apis[first].stop('SIGKILL')
    const killedAt = Date.now()
    // Publishes made while no node is connected wait in the outbox.
    await until('the loss is seen', () => c.status.state !== 'connected', 5_000, 1)
    for (let i = 0; i < 10; i++) say(`outage ${i}`)
    const waitingInOutage = c.pending
    await until('moved to the other node', () => c.status.state === 'connected' && c.status.url.startsWith(d.urls[other].replace('http', 'ws')), 15_000)
    const movedIn = Date.now() - killedAt
    await chat
    await Promise.all(published)
    sending = false
    await scores

    const readRoom = async () => {
      const texts: string[] = []
      let before: string | undefined
      for (;;) {
        const page = (await d.call('GET', `/v1/rooms/${room}/messages?limit=100${before ? `&before=${before}` : ''}`, undefined, { node: other })).json
        if (page.messages.length === 0) return texts.reverse()
        texts.push(...page.messages.map((m: any) => m.text))
        before = page.messages.at(-1).id
      }
    }
    const texts = await until('chat projected', async () => ((await readRoom()).length >= sent.length ? readRoom() : undefined), 20_000, 200)
    expect(texts).toEqual(sent)
    expect(waitingInOutage).toBeGreaterThanOrEqual(10)

    await until(
      'board and room held equal the read models',
      async () => {
        const b = (await d.call('GET', `/v1/leaderboards/${board}?limit=100`, undefined, { node: other })).json
        const r = (await d.call('GET', `/v1/rooms/${room}/messages?limit=50`, undefined, { node: other })).json
        const held = boardSub.state?.entries.map(({ reachedSeq: _, ...e }) => e)
        return Bun.deepEquals(held, b.entries) && Bun.deepEquals(roomSub.state?.messages, r.messages)
      },
      20_000,
      100,
    )
    // No gap, no repeat: each update continued the one before, across the move; the resume was
    // accepted (no resync), so nothing was skipped over with a snapshot either.
    for (const [channel, entries] of log) {
      let last: number | undefined
      for (const e of entries) {
        expect(e).not.toBe('resync')
        const [, from, version] = e.split(' ').map(Number)
        if (last !== undefined) expect(`${channel} ${from}`).toBe(`${channel} ${last + 1}`)
        last = version
      }
    }
    expect(log.get('board')!.length).toBeGreaterThan(20)
    expect([...nodesSeen]).toEqual([d.urls[other].replace('http', 'ws') + '/v1/ws'])
    const duplicates = (await Promise.all(published)).filter((a) => a.duplicate).length
    console.log(
      `failover: reconnected ${movedIn} ms after the kill; ${waitingInOutage} publishes waited in the outage, ${duplicates} resends were already stored; ${log.get('board')!.length} board and ${log.get('room')!.length} room updates`,
    )
  }, 90_000)
})
