import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { asc } from 'drizzle-orm'
import { chatMessages } from '../../core/db/schema'
import { startTestNode, type TestNode } from '../../api/src/test-support'
import { startTestWorker, untilCaughtUp } from '../../stream-workers/src/testing/harness'
import type { Workers } from '../../stream-workers/src/workers'
import { mintUserToken } from '../../api/src/auth/mint'
import { WsClient } from '../e2e/harness'

/**
 * Event ids are de-duplicated per publisher: one publisher's id can neither hide another's event
 * nor tell it which ids exist. A real API node and a real worker, against Postgres and NATS.
 */
describe('event ids are scoped to their publisher', () => {
  let node: TestNode
  let workers: Workers

  beforeAll(async () => {
    node = await startTestNode({ FANFARE_PARTITIONS: '2' })
    workers = await startTestWorker(node.env)
  })
  afterAll(async () => {
    await workers?.stop()
    await node?.close()
  })

  const post = async (token: string, body: unknown) => {
    const res = await fetch(`${node.base}/v1/events`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    })
    return { status: res.status, json: (await res.json()) as any }
  }
  const get = async (path: string) => (await fetch(`${node.base}${path}`)).json() as Promise<any>
  const caughtUp = () => untilCaughtUp({ config: node.env.config, db: node.database.db, nc: node.nc })

  /** A player's WebSocket, signed in with a token of the game's auth (the test's secret). */
  const player = async (sub: string) =>
    WsClient.open(`${node.base.replace('http', 'ws')}/v1/ws?token=${await mintUserToken(node.env.vars.FANFARE_JWT_SECRET, { sub })}`)

  test("a player's chat message cannot hide the game server's score with the same id; each publisher's resend is still a duplicate", async () => {
    const id = 'match-42-final-score'
    const anon = await player('troll')
    anon.send({ op: 'publish', ref: 'c1', event: { id, type: 'chat.message.posted', data: { room: 'lobby', text: 'gg' } } })
    expect(await anon.reply('c1')).toMatchObject({ op: 'ack', id, duplicate: false })

    const score = { id, type: 'score.submitted', data: { board: 'finals', player: 'team-a', score: 42 } }
    const first = await post(node.env.vars.FANFARE_INGEST_TOKEN, score)
    expect(first.status).toBe(202)
    expect(first.json.results).toEqual([{ id, seq: expect.any(Number), duplicate: false }])

    // The same publisher resending its own id is de-duplicated, as before.
    const again = await post(node.env.vars.FANFARE_INGEST_TOKEN, score)
    expect(again.json.results).toEqual([{ id, seq: first.json.results[0].seq, duplicate: true }])
    anon.send({ op: 'publish', ref: 'c2', event: { id, type: 'chat.message.posted', data: { room: 'lobby', text: 'gg' } } })
    expect(await anon.reply('c2')).toMatchObject({ op: 'ack', id, duplicate: true })
    anon.close()

    await caughtUp()
    expect((await get('/v1/leaderboards/finals')).entries).toEqual([{ rank: 1, player: 'team-a', score: 42 }])
    expect((await get('/v1/rooms/lobby/messages')).messages).toMatchObject([{ id, user: 'troll', text: 'gg' }])
  })

  test('the same message id in two rooms is two messages; a deletion removes only its room’s', async () => {
    const id = 'hello-1'
    const admin = node.env.vars.FANFARE_ADMIN_TOKEN
    const anon = await player('ann')
    anon.send({ op: 'publish', ref: 'a', event: { id, type: 'chat.message.posted', data: { room: 'red', text: 'in red' } } })
    expect(await anon.reply('a')).toMatchObject({ op: 'ack', id, duplicate: false })
    anon.close()
    const blue = await post(node.env.vars.FANFARE_INGEST_TOKEN, { id, type: 'chat.message.posted', data: { room: 'blue', user: 'bob', text: 'in blue' } })
    expect(blue.json.results[0]).toMatchObject({ id, duplicate: false })
    await caughtUp()
    expect((await get('/v1/rooms/red/messages')).messages).toMatchObject([{ id, user: 'ann', text: 'in red' }])
    expect((await get('/v1/rooms/blue/messages')).messages).toMatchObject([{ id, user: 'bob', text: 'in blue' }])

    const del = await fetch(`${node.base}/admin/rooms/red/messages/${id}`, { method: 'DELETE', headers: { authorization: `Bearer ${admin}` } })
    expect(del.status).toBe(202)
    await caughtUp()
    expect((await get('/v1/rooms/red/messages')).messages).toEqual([])
    expect((await get('/v1/rooms/blue/messages')).messages).toMatchObject([{ id, text: 'in blue' }])
    const rows = await node.database.db.select().from(chatMessages).orderBy(asc(chatMessages.room))
    expect(rows.filter((r) => r.id === id).map((r) => [r.room, r.deleted])).toEqual([
      ['blue', false],
      ['red', true],
    ])
  })
})
