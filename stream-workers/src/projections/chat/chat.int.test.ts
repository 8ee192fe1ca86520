import { afterEach, describe, expect, test } from 'bun:test'
import { asc } from 'drizzle-orm'
import { chatMessages, deadLetters } from '../../../../core/db/schema'
import { keyOf, partitionOf, subjects } from '../../../../core/events'
import { byChannel, caughtUp, createWorld, publishEvent, readNotices, storedEvent, type World } from '../../testing/harness'

let world: World | undefined
afterEach(async () => {
  await world?.close()
  world = undefined
})

const post = (room: string, id: string, by: string, text: string) => storedEvent('chat.message.posted', { room, user: `${by}-user`, text }, id, by)
const messages = async (w: World) =>
  (await w.database.db.select().from(chatMessages).orderBy(asc(chatMessages.room), asc(chatMessages.seq))).map((m) => ({
    room: m.room,
    id: m.id,
    by: m.by,
    text: m.text,
    deleted: m.deleted,
  }))

/** chat_messages is keyed by (room, id): ids are unique per publisher, not across rooms. */
describe('chat projection: message ids per room', () => {
  test('the same id in two rooms is two messages; a deletion carries its room and removes only that one', async () => {
    const w = (world = await createWorld())
    const workers = await w.startWorker()
    await publishEvent(w, post('red', 'm-1', 'anonymous', 'in red'))
    await publishEvent(w, post('blue', 'm-1', 'ingest', 'in blue'))
    await caughtUp(w)
    expect(await messages(w)).toEqual([
      { room: 'blue', id: 'm-1', by: 'ingest', text: 'in blue', deleted: false },
      { room: 'red', id: 'm-1', by: 'anonymous', text: 'in red', deleted: false },
    ])
    await publishEvent(w, storedEvent('chat.message.deleted', { room: 'blue', messageId: 'm-1' }, undefined, 'admin'))
    await caughtUp(w)
    expect((await messages(w)).map((m) => [m.room, m.deleted])).toEqual([
      ['blue', true],
      ['red', false],
    ])
    const notices = byChannel(await readNotices(w))
    expect(notices.get('chat:red')?.map((n) => n.data)).toEqual([{ kind: 'posted', message: expect.objectContaining({ id: 'm-1', text: 'in red' }) }])
    expect(notices.get('chat:blue')?.map((n) => n.data)).toEqual([
      { kind: 'posted', message: expect.objectContaining({ id: 'm-1', text: 'in blue' }) },
      { kind: 'deleted', messageId: 'm-1' },
    ])
    await workers.stop()
  })

  test('another publisher posting an id the room holds: the first message is kept, the second is a dead letter; a resend by the first is a no-op', async () => {
    const w = (world = await createWorld())
    const workers = await w.startWorker()
    const first = post('lobby', 'same', 'anonymous', 'first')
    await publishEvent(w, first)
    const second = await publishEvent(w, post('lobby', 'same', 'ingest', 'second'))
    expect(second.duplicate).toBe(false)
    // The first publisher resending after the de-duplication window: JetStream stores it again.
    const p = partitionOf(keyOf(first), w.config.FANFARE_PARTITIONS)
    await w.js.publish(subjects.event(w.config.FANFARE_SUBJECT_PREFIX, p, first.type), JSON.stringify(first))
    await caughtUp(w)
    expect(await messages(w)).toEqual([{ room: 'lobby', id: 'same', by: 'anonymous', text: 'first', deleted: false }])
    const dead = await w.database.db.select().from(deadLetters)
    expect(dead.map((d) => [d.projection, d.partition, d.streamSeq, d.eventId])).toEqual([['chat', p, second.seq, 'same']])
    expect(dead[0].reason).toContain('already used in room "lobby" by another publisher')
    expect(JSON.parse(dead[0].payload)).toMatchObject({ id: 'same', by: 'ingest', data: { text: 'second' } })
    const notices = byChannel(await readNotices(w))
    expect(notices.get('chat:lobby')?.map((n) => n.version)).toEqual([1])
    await workers.stop()
  })
})
