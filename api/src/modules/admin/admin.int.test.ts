import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { deadLetters, projectionCheckpoints } from '../../../../core/db/schema'
import { AckPolicy } from '@nats-io/jetstream'
import { subjects } from '../../../../core/events'
import { topology } from '../../../../core/nats'
import { consumerName } from '../../../../core/projections'
import { createHarness, type ApiHarness } from '../../test-support'
import { createApp } from '../../app'
import { connectPostgres } from '../../../../core/db/client'
import { freePort } from '../../../../core/process'

describe('/admin', () => {
  let h: ApiHarness
  beforeAll(async () => {
    h = await createHarness()
  })
  afterAll(async () => {
    await h.close()
  })

  test('every admin route is 401 without a token and 403 with the ingest token', async () => {
    const routes: [string, string, unknown?][] = [
      ['GET', '/admin/leaderboards/b'],
      ['PUT', '/admin/leaderboards/b', { order: 'asc' }],
      ['DELETE', '/admin/rooms/lobby/messages/m1'],
      ['GET', '/admin/projections'],
      ['GET', '/admin/dead-letters'],
    ]
    for (const [method, path, body] of routes) {
      const none = await h.call(method, path, { body })
      expect([method, path, none.status, none.json.error?.code]).toEqual([method, path, 401, 'unauthorized'])
      const ingest = await h.call(method, path, { body, token: h.ingestToken })
      expect([method, path, ingest.status, ingest.json.error?.code]).toEqual([method, path, 403, 'forbidden'])
    }
  })

  test('board config: defaults, upsert, partial update', async () => {
    const t = h.adminToken
    const initial = await h.call('GET', '/admin/leaderboards/speedrun', { token: t })
    expect(initial.json).toEqual({ board: 'speedrun', order: 'desc', operator: 'best', reset: 'none', configured: false })
    const put = await h.call('PUT', '/admin/leaderboards/speedrun', { token: t, body: { order: 'asc', operator: 'latest' } })
    expect(put.status).toBe(200)
    expect(put.json).toEqual({ board: 'speedrun', order: 'asc', operator: 'latest', reset: 'none', configured: true })
    const partial = await h.call('PUT', '/admin/leaderboards/speedrun', { token: t, body: { operator: 'sum' } })
    expect(partial.json).toEqual({ board: 'speedrun', order: 'asc', operator: 'sum', reset: 'none', configured: true })
    const read = await h.call('GET', '/admin/leaderboards/speedrun', { token: t })
    expect(read.json).toEqual(partial.json)
    // The public read follows the config.
    const pub = await h.call('GET', '/v1/leaderboards/speedrun')
    expect(pub.json.order).toBe('asc')
    const bad = await h.call('PUT', '/admin/leaderboards/speedrun', { token: t, body: { order: 'sideways' } })
    expect(bad.status).toBe(422)
    expect(bad.json.error.code).toBe('invalid_request')
    // A value none of the allowed ones is told them all (not "Expected 'none'", the first).
    const badReset = await h.call('PUT', '/admin/leaderboards/speedrun', { token: t, body: { reset: 'hourly' } })
    expect(badReset.status).toBe(422)
    expect(badReset.json.error.details).toEqual([{ in: 'body', path: '/reset', message: 'must be one of "none", "daily", "weekly", "monthly"' }])
  })

  test('deleting a message publishes chat.message.deleted to the stream', async () => {
    const r = await h.call('DELETE', '/admin/rooms/lobby/messages/msg-123', { token: h.adminToken })
    expect(r.status).toBe(202)
    expect(r.json.results).toHaveLength(1)
    const stored = await h.jsm.streams.getMessage(topology(h.env.config).eventStream, { seq: r.json.results[0].seq })
    expect(stored!.subject).toEndWith('.chat.message.deleted')
    expect(stored!.json<any>()).toMatchObject({ id: r.json.results[0].id, type: 'chat.message.deleted', v: 1, data: { room: 'lobby', messageId: 'msg-123' } })
    const bad = await h.call('DELETE', '/admin/rooms/bad%20room/messages/x', { token: h.adminToken })
    expect(bad.status).toBe(422)
  })

  test('projections: per partition, the consumer of its ownership; lag unknown (null) without a worker holding the partition', async () => {
    const posted = await h.call('POST', '/v1/events', { token: h.ingestToken, body: { type: 'score.submitted', data: { board: 'b', player: 'p', score: 1 } } })
    const seq = posted.json.results[0].seq
    const t = topology(h.env.config)
    const info = await h.jsm.streams.info(t.eventStream)
    const stored = await h.jsm.streams.getMessage(t.eventStream, { seq })
    const p = subjects.partitionOfSubject(stored!.subject)
    await h.database.db.insert(projectionCheckpoints).values([{ projection: 'chat', partition: p, seq: 0, fence: 1 }])
    // What owners of partition p would have made (one consumer per projection), without a worker:
    // the lag comes from the worker holding the partition (projections-lag.int.test.ts), none here.
    for (const [name, area] of [['leaderboards', 'score'], ['chat', 'chat']] as const) {
      for (const token of [1, 2]) {
        await h.jsm.consumers.add(t.eventStream, {
          durable_name: consumerName(name, p, token),
          filter_subject: subjects.projectionFilter(t.prefix, p, area),
          ack_policy: AckPolicy.Explicit,
        })
      }
    }
    const r = await h.call('GET', '/admin/projections', { token: h.adminToken })
    expect(r.status).toBe(200)
    expect(r.json.stream).toMatchObject({ name: t.eventStream, lastSeq: info.state.last_seq })
    const byName = Object.fromEntries(r.json.projections.map((x: any) => [x.projection, x]))
    const part = (name: string) => byName[name].partitions.find((x: any) => x.partition === p)
    // The newest ownership's consumer (the highest token).
    expect(part('leaderboards')).toMatchObject({ seq: 0, consumer: consumerName('leaderboards', p, 2), lag: null })
    expect(part('chat')).toMatchObject({ seq: 0, fence: 1, consumer: consumerName('chat', p, 2), lag: null })
    expect(byName.leaderboards.partitions.filter((x: any) => x.partition !== p).every((x: any) => x.consumer === null && x.lag === null)).toBe(true)
    expect(byName.leaderboards.lag).toBeNull()
  })

  test('dead letters newest first, paged by id', async () => {
    const rows = await h.database.db
      .insert(deadLetters)
      .values(
        [1, 2, 3].map((i) => ({
          projection: 'chat',
          partition: 0,
          streamSeq: i,
          subject: 'x.ev.0.chat.message.posted',
          eventId: i === 2 ? null : `e${i}`,
          reason: 'invalid data',
          payload: '{}',
        })),
      )
      .returning({ id: deadLetters.id })
    const ids = rows.map((r) => r.id)
    const all = await h.call('GET', '/admin/dead-letters', { token: h.adminToken })
    expect(all.status).toBe(200)
    expect(all.json.deadLetters.map((d: any) => d.id)).toEqual([...ids].reverse())
    expect(all.json.deadLetters[1]).toMatchObject({ eventId: null, streamSeq: 2, reason: 'invalid data', projection: 'chat' })
    expect(typeof all.json.deadLetters[0].createdAt).toBe('string')
    const page = await h.call('GET', `/admin/dead-letters?limit=1&before=${ids[2]}`, { token: h.adminToken })
    expect(page.json.deadLetters.map((d: any) => d.id)).toEqual([ids[1]])
  })

  test('with Postgres down, the rebuild, projection and dead-letter routes are 503 database_unavailable and request nothing', async () => {
    // A database nobody listens on: every query fails as with Postgres down (ECONNREFUSED).
    const gone = await connectPostgres(`postgres://postgres@127.0.0.1:${freePort()}/none`, { max: 1 })
    try {
      const app = createApp({ ...h.deps, db: gone.db })
      for (const [method, path] of [
        ['POST', '/admin/projections/leaderboards/rebuild'],
        ['GET', '/admin/projections'],
        ['GET', '/admin/dead-letters'],
        ['POST', '/admin/dead-letters/1/replay'],
        ['DELETE', '/admin/dead-letters/1'],
      ]) {
        const r = await app.handle(new Request(`http://localhost${path}`, { method, headers: { authorization: `Bearer ${h.adminToken}` } }))
        const body = (await r.json()) as { error: { code: string; message: string } }
        expect([method, path, r.status, body.error.code, r.headers.get('retry-after')]).toEqual([method, path, 503, 'database_unavailable', '1'])
        // Nothing about our queries in the answer.
        expect(body.error.message).not.toContain('select')
      }
      expect((await h.call('GET', '/admin/projections/leaderboards/rebuild', { token: h.adminToken })).status).toBe(404)
    } finally {
      await gone.close()
    }
  })
})
