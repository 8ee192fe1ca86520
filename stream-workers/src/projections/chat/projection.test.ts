import { describe, expect, test } from 'bun:test'
import { evolveMessage, type ChatEvent, type MessageState } from './projection'

const postedAt = new Date('2025-01-02T03:04:05.000Z')
const posted: ChatEvent = { type: 'chat.message.posted', id: 'm1', by: 'anonymous', data: { room: 'lobby', user: 'ann', text: 'hi' }, seq: 4, postedAt }
const existing: MessageState = { id: 'm1', room: 'lobby', by: 'anonymous', user: 'ann', text: 'hi', seq: 4, postedAt, deleted: false }

describe('evolveMessage', () => {
  test('posted creates the message and announces it', () => {
    expect(evolveMessage(undefined, posted)).toEqual({
      next: existing,
      change: { kind: 'posted', message: { id: 'm1', room: 'lobby', user: 'ann', text: 'hi', postedAt: postedAt.toISOString() } },
    })
  })

  test('the same publisher posting an id the room already holds changes nothing (a resend)', () => {
    expect(evolveMessage(existing, posted)).toBeNull()
    expect(evolveMessage({ ...existing, deleted: true }, posted)).toBeNull()
  })

  test('another publisher posting an id the room already holds is refused, and the first message kept', () => {
    const other: ChatEvent = { ...posted, by: 'ingest', data: { room: 'lobby', user: 'bob', text: 'mine' }, seq: 9 }
    expect(evolveMessage(existing, other)).toEqual({ refused: expect.stringContaining('"m1" is already used in room "lobby" by another publisher') })
  })

  test('deleted marks an existing message once', () => {
    const del: ChatEvent = { type: 'chat.message.deleted', data: { room: 'lobby', messageId: 'm1' } }
    const r = evolveMessage(existing, del)
    expect(r).toEqual({ next: { ...existing, deleted: true }, change: { kind: 'deleted', messageId: 'm1' } })
    expect(r && 'next' in r && evolveMessage(r.next, del)).toBeNull()
  })

  test('deleting an unknown message, or one of another room, changes nothing', () => {
    expect(evolveMessage(undefined, { type: 'chat.message.deleted', data: { room: 'lobby', messageId: 'nope' } })).toBeNull()
    expect(evolveMessage(existing, { type: 'chat.message.deleted', data: { room: 'other', messageId: 'm1' } })).toBeNull()
  })
})
