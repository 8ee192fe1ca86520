import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { channelVersions, chatMessages } from '../../../../core/db/schema'
import { createHarness, type ApiHarness } from '../../test-support'
import { roomSnapshot } from './service'

describe('room reads', () => {
  let h: ApiHarness
  beforeAll(async () => {
    h = await createHarness()
    const base = Date.parse('2030-01-01T00:00:00Z')
    await h.database.db.insert(chatMessages).values([
      ...Array.from({ length: 6 }, (_, i) => ({
        id: `m${i + 1}`,
        room: 'lobby',
        user: `u${i + 1}`,
        text: `hello ${i + 1}`,
        seq: (i + 1) * 10,
        postedAt: new Date(base + i * 1000),
        deleted: i + 1 === 4,
      })),
      { id: 'other', room: 'elsewhere', user: 'u', text: 'x', seq: 15, postedAt: new Date(base) },
    ])
    await h.database.db.insert(channelVersions).values({ channel: 'chat:lobby', version: 7 })
  })
  afterAll(async () => {
    await h.close()
  })

  test('newest first, without deleted messages', async () => {
    const r = await h.call('GET', '/v1/rooms/lobby/messages')
    expect(r.status).toBe(200)
    expect(r.json.room).toBe('lobby')
    expect(r.json.messages.map((m: any) => m.id)).toEqual(['m6', 'm5', 'm3', 'm2', 'm1'])
    expect(r.json.messages[0]).toEqual({ id: 'm6', user: 'u6', text: 'hello 6', postedAt: '2030-01-01T00:00:05.000Z' })
  })

  test('before and limit page to older messages', async () => {
    const r = await h.call('GET', '/v1/rooms/lobby/messages?before=m5&limit=2')
    expect(r.json.messages.map((m: any) => m.id)).toEqual(['m3', 'm2'])
    // A deleted message still anchors paging.
    const fromDeleted = await h.call('GET', '/v1/rooms/lobby/messages?before=m4')
    expect(fromDeleted.json.messages.map((m: any) => m.id)).toEqual(['m3', 'm2', 'm1'])
  })

  test('unknown before is 404 message_not_found; bad limit is 422', async () => {
    const r = await h.call('GET', '/v1/rooms/lobby/messages?before=other')
    expect(r.status).toBe(404)
    expect(r.json.error.code).toBe('message_not_found')
    const bad = await h.call('GET', '/v1/rooms/lobby/messages?limit=101')
    expect(bad.status).toBe(422)
    expect(bad.json.error.code).toBe('invalid_request')
  })

  test('unknown room is empty', async () => {
    const r = await h.call('GET', '/v1/rooms/void/messages')
    expect(r.json).toEqual({ room: 'void', messages: [] })
  })

  test('snapshot carries the channel version (0 when none)', async () => {
    const snap = await roomSnapshot(h.database.db, 'lobby')
    expect(snap.version).toBe(7)
    expect(snap.data.messages.map((m) => m.id)).toEqual(['m6', 'm5', 'm3', 'm2', 'm1'])
    const none = await roomSnapshot(h.database.db, 'elsewhere')
    expect(none).toEqual({ version: 0, epoch: '', data: { room: 'elsewhere', messages: [expect.objectContaining({ id: 'other' })], limit: 50 } })
  })
})

describe('room visibility on an API node (RoomAccess)', () => {
  let h: ApiHarness
  beforeAll(async () => {
    h = await createHarness()
  })
  afterAll(async () => {
    await h.close()
  })

  test('callers of a room not cached share one lookup (so publishes waiting on it resume in their order); then it is at hand', async () => {
    const rooms = h.deps.security.rooms
    await rooms.setVisibility('shared-look', 'private')
    const first = rooms.visibilityNowOr('shared-look')
    const second = rooms.visibilityNowOr('shared-look')
    expect(first).toBeInstanceOf(Promise)
    // The same promise: awaiting it, callers resume in the order they came (two lookups could
    // come back in either order, and a user's later post overtake an earlier one).
    expect(second).toBe(first)
    expect(await first).toBe('private')
    expect(rooms.visibilityNowOr('shared-look')).toBe('private')
    // A change drops what was cached and any lookup under way: the next caller reads again.
    await rooms.setVisibility('shared-look', 'public')
    const fresh = rooms.visibilityNowOr('shared-look')
    expect(fresh).toBeInstanceOf(Promise)
    expect(await fresh).toBe('public')
  })
})
