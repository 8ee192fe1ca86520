import { sql, type SQL } from 'drizzle-orm'
import { channelOf } from '../../../../core/channels'
import { rowsOf, type Db } from '../../../../core/db/client'
import { lookupByKey, recordset } from '../../../../core/db/recordset'
import { chatMessages } from '../../../../core/db/schema'
import type { Applied, Change, Projection, SequencedEvent } from '../types'
import { evolveMessage, type ChatEvent, type MessageState } from './projection'
import { projectionAreas } from '../../../../core/projections'

/**
 * Applies a batch of `chat.*` events: loads every message the batch refers to in one query,
 * evolves them in memory in event order, and returns the one upsert that writes the changed ones
 * (rows bound as one JSON parameter, see recordset) for the batch to run, and the posts it refused
 * (an id another publisher already uses in the room, see evolveMessage) for the batch to
 * dead-letter.
 */
export async function applyChat(db: Db, events: SequencedEvent[]): Promise<Applied> {
  // A message is named by its room and id (ids are unique per publisher, not across rooms).
  const chat: { room: string; id: string; seq: number; ev: ChatEvent }[] = []
  for (const { event, seq, storedAt } of events) {
    switch (event.type) {
      case 'chat.message.posted': {
        const postedAt = event.at && !Number.isNaN(Date.parse(event.at)) ? new Date(event.at) : storedAt
        chat.push({ room: event.data.room, id: event.id, seq, ev: { type: event.type, id: event.id, by: event.by, data: event.data, seq, postedAt } })
        break
      }
      case 'chat.message.deleted':
        chat.push({ room: event.data.room, id: event.data.messageId, seq, ev: { type: event.type, data: event.data } })
        break
      default:
        // The batch dead-letters events of other areas before they get here.
        throw new Error(`chat projection got ${event.type}`)
    }
  }
  if (chat.length === 0) return { changes: [] }

  // Neither a room name nor an event id holds a '/'.
  const refOf = (m: { room: string; id: string }) => `${m.room}/${m.id}`
  const keys = new Map(chat.map((c) => [refOf(c), { room: c.room, id: c.id }]))
  const messages = new Map<string, MessageState>()
  const rows = await rowsOf<{ id: string; room: string; posted_by: string; user_id: string; user_name: string | null; text: string; seq: string | number; posted_at: string | Date; deleted: boolean }>(
    db,
    lookupByKey(chatMessages, ['room', 'id'], [...keys.values()]),
  )
  for (const r of rows) {
    const m: MessageState = {
      id: r.id,
      room: r.room,
      by: r.posted_by,
      user: r.user_id,
      ...(r.user_name ? { name: r.user_name } : {}),
      text: r.text,
      seq: Number(r.seq),
      postedAt: new Date(r.posted_at),
      deleted: r.deleted,
    }
    messages.set(refOf(m), m)
  }

  const changes: Change[] = []
  const refused: { seq: number; reason: string }[] = []
  const dirty = new Map<string, MessageState>()
  for (const c of chat) {
    const ref = refOf(c)
    const r = evolveMessage(messages.get(ref), c.ev)
    if (!r) continue
    if ('refused' in r) {
      refused.push({ seq: c.seq, reason: r.refused })
      continue
    }
    messages.set(ref, r.next)
    dirty.set(ref, r.next)
    changes.push({ channel: channelOf.chat(r.next.room), data: r.change })
  }

  if (dirty.size === 0) return { changes, refused }
  const written = [...dirty.values()].map((m) => ({ ...m, name: m.name ?? null, postedAt: m.postedAt.toISOString() }))
  const columns = { id: 'text', room: 'text', by: 'text', user: 'text', name: 'text', text: 'text', seq: 'bigint', postedAt: 'timestamptz', deleted: 'boolean' }
  const write = (when: SQL) =>
    db
      .insert(chatMessages)
      .select(sql`select id, room, "by", "user", name, text, seq, "postedAt", deleted from ${recordset('m', columns, written)} where ${when}`)
      .onConflictDoUpdate({ target: [chatMessages.room, chatMessages.id], set: { deleted: sql`excluded.deleted` } })
  return { changes, write, refused }
}

/** The chat read model: `chat.*` events into chat_messages. */
export const chatProjection: Projection = { name: 'chat', area: projectionAreas.chat, apply: applyChat }
