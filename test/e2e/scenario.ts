import { expect } from 'bun:test'
import { mintUserToken } from '../../api/src/auth/mint'
import { until, WsClient } from './harness'

export type Target = { baseUrl: string; wsUrl: string; ingestToken: string; adminToken: string; jwtSecret: string }

const json = (token: string | undefined, body: unknown, method = 'POST') => ({
  method,
  headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
  body: typeof body === 'string' ? body : JSON.stringify(body),
})

/** Versions a client saw on a channel: a snapshot, then updates rising by exactly one. */
function expectGapFree(frames: any[]) {
  expect(frames[0]?.op).toBe('snapshot')
  const versions = frames.map((f) => f.version)
  const expected = versions.map((_, i) => versions[0] + i)
  expect(versions).toEqual(expected)
}

/** The board a client sees: its snapshot with every update applied. */
function boardSeen(frames: any[]): Record<string, number> {
  const scores: Record<string, number> = {}
  for (const f of frames) {
    if (f.op === 'snapshot') {
      for (const k of Object.keys(scores)) delete scores[k]
      for (const e of f.data.entries) scores[e.player] = e.score
    } else scores[f.data.player] = f.data.score
  }
  return scores
}

function roomSeen(frames: any[]): string[] {
  let ids: string[] = []
  for (const f of frames) {
    if (f.op === 'snapshot') ids = f.data.messages.map((m: any) => m.id)
    else if (f.data.kind === 'posted') ids = [f.data.message.id, ...ids]
    else ids = ids.filter((id) => id !== f.data.messageId)
  }
  return ids
}

/**
 * The end-to-end story a user of Fanfare relies on: events in over REST and WebSocket, read models
 * right over REST, and every subscriber gap-free, including one that joins mid-flow.
 */
export async function runScenario(t: Target) {
  const run = Math.random().toString(36).slice(2, 8)
  const board = `board_${run}`
  const room = `room_${run}`
  const lb = `leaderboard:${board}`
  const chat = `chat:${room}`

  // Bad input is refused with the error shape and changes nothing.
  const noToken = await fetch(`${t.baseUrl}/v1/events`, json(undefined, { type: 'score.submitted', data: {} }))
  expect(noToken.status).toBe(401)
  expect((await noToken.json()).error.code).toBeString()
  const badJson = await fetch(`${t.baseUrl}/v1/events`, json(t.ingestToken, '{"type": '))
  expect(badJson.status).toBe(400)
  expect((await badJson.json()).error).toMatchObject({ code: expect.any(String), message: expect.any(String) })
  const unknownType = await fetch(`${t.baseUrl}/v1/events`, json(t.ingestToken, { type: 'nope.nothing', data: {} }))
  expect(unknownType.status).toBe(422)

  const early = await WsClient.open(t.wsUrl)
  early.send({ op: 'subscribe', ref: 's1', channel: lb })
  early.send({ op: 'subscribe', ref: 's2', channel: chat })
  await until('early snapshots', () => early.of(lb).length >= 1 && early.of(chat).length >= 1)
  expect(early.of(lb)[0]).toMatchObject({ op: 'snapshot', version: 0, data: { entries: [] } })

  // Malformed frames get an error frame and the connection stays usable.
  early.send('not json')
  early.send({ op: 'dance', ref: 'x1' })
  await early.reply('x1')
  expect(early.frames.find((f) => f.ref === 'x1').error.code).toBe('unknown_op')

  // Scores over REST, in a batch; a resend of the same ids is reported duplicate.
  const oracle: Record<string, number> = {}
  const events = Array.from({ length: 60 }, (_, i) => {
    const player = `p${i % 12}`
    const score = (i * 37) % 101
    return { id: `${run}-s${i}`, type: 'score.submitted', data: { board, player, score } }
  })
  for (const e of events) oracle[e.data.player] = Math.max(oracle[e.data.player] ?? -Infinity, e.data.score)
  const first = await fetch(`${t.baseUrl}/v1/events`, json(t.ingestToken, { events: events.slice(0, 30) }))
  expect(first.status).toBe(202)
  const firstBody = await first.json()
  expect(firstBody.results).toHaveLength(30)
  expect(firstBody.results.every((r: any) => r.duplicate === false && r.seq > 0)).toBe(true)

  // A subscriber joining while updates flow.
  const late = await WsClient.open(t.wsUrl)
  late.send({ op: 'subscribe', ref: 'l1', channel: lb })

  const resend = await fetch(`${t.baseUrl}/v1/events`, json(t.ingestToken, { events: events.slice(0, 5) }))
  expect(resend.status).toBe(202)
  const resendBody = await resend.json()
  expect(resendBody.results.map((r: any) => r.duplicate)).toEqual([true, true, true, true, true])
  expect(resendBody.results.map((r: any) => r.seq)).toEqual(firstBody.results.slice(0, 5).map((r: any) => r.seq))

  // Scores over WebSocket need a key with the scope (here the ingest token); players post chat
  // (as themselves), never scores; anonymous viewers publish nothing.
  const anon = await WsClient.open(t.wsUrl)
  anon.send({ op: 'publish', ref: 'a1', event: events[30] })
  expect((await anon.reply('a1')).error.code).toBe('unauthorized')
  const ann = await WsClient.open(`${t.wsUrl}?token=${await mintUserToken(t.jwtSecret, { sub: 'ann', name: 'Ann' })}`)
  ann.send({ op: 'publish', ref: 'a2', event: events[30] })
  expect((await ann.reply('a2')).error.code).toBe('forbidden')
  const publisher = await WsClient.open(`${t.wsUrl}?token=${t.ingestToken}`)
  for (const [i, e] of events.slice(30).entries()) publisher.send({ op: 'publish', ref: `w${i}`, event: e })
  for (let i = 0; i < 30; i++) expect(await publisher.reply(`w${i}`)).toMatchObject({ op: 'ack', duplicate: false })

  const chatIds: string[] = []
  for (let i = 0; i < 5; i++) {
    ann.send({ op: 'publish', ref: `c${i}`, event: { type: 'chat.message.posted', data: { room, text: `hello ${i}` } } })
    const ack = await ann.reply(`c${i}`)
    expect(ack.op).toBe('ack')
    chatIds.push(ack.id)
  }

  // The read model over REST converges to the oracle...
  const expectedTop = Object.entries(oracle).sort((a, b) => b[1] - a[1])
  await until('leaderboard read model', async () => {
    const body = await (await fetch(`${t.baseUrl}/v1/leaderboards/${board}?limit=100`)).json()
    return body.entries.length === expectedTop.length && body.entries.every((e: any) => oracle[e.player] === e.score)
  })
  const top = await (await fetch(`${t.baseUrl}/v1/leaderboards/${board}?limit=100`)).json()
  expect(top.entries.map((e: any) => e.score)).toEqual(expectedTop.map(([, s]) => s))
  expect(top.entries.map((e: any) => e.rank)).toEqual(expectedTop.map((_, i) => i + 1))
  const [leader] = top.entries
  const me = await (await fetch(`${t.baseUrl}/v1/leaderboards/${board}/players/${leader.player}`)).json()
  expect(me).toMatchObject({ rank: 1, score: leader.score })

  // ...and both subscribers saw every change, in order, ending at the same state.
  for (const client of [early, late]) {
    await until('subscriber converges', () => {
      const seen = boardSeen(client.of(lb))
      return Object.keys(seen).length === expectedTop.length && Object.entries(seen).every(([p, s]) => oracle[p] === s)
    })
    expectGapFree(client.of(lb))
  }
  const lastVersion = early.of(lb).at(-1).version
  expect(late.of(lb).at(-1).version).toBe(lastVersion)

  // Chat: history over REST, a deletion by an admin flows through the stream to subscribers.
  await until('chat read model', async () => {
    const body = await (await fetch(`${t.baseUrl}/v1/rooms/${room}/messages`)).json()
    return body.messages.length === 5
  })
  const history = await (await fetch(`${t.baseUrl}/v1/rooms/${room}/messages`)).json()
  expect(history.messages.map((m: any) => m.id)).toEqual([...chatIds].reverse())
  // The server stamped who posted: the token's sub and display name, whatever the frame said.
  expect(history.messages.every((m: any) => m.user === 'ann' && m.name === 'Ann')).toBe(true)
  const del = await fetch(`${t.baseUrl}/admin/rooms/${room}/messages/${chatIds[2]}`, {
    method: 'DELETE',
    headers: { authorization: `Bearer ${t.adminToken}` },
  })
  expect(del.status).toBe(202)
  await until('deletion reaches the subscriber', () => roomSeen(early.of(chat)).length === 4)
  expect(roomSeen(early.of(chat))).toEqual([...chatIds].reverse().filter((id) => id !== chatIds[2]))
  expectGapFree(early.of(chat))
  const after = await (await fetch(`${t.baseUrl}/v1/rooms/${room}/messages`)).json()
  expect(after.messages.map((m: any) => m.id)).not.toContain(chatIds[2])

  // Unsubscribe works.
  early.send({ op: 'unsubscribe', ref: 'u1', channel: chat })
  expect((await early.reply('u1')).op).toBe('unsubscribed')

  for (const c of [early, late, anon, ann, publisher]) c.close()
}
