import { sql, type SQL } from 'drizzle-orm'
import { channelOf } from '../../../../core/channels'
import { rowsOf, type Db } from '../../../../core/db/client'
import { lookupByKey, recordset } from '../../../../core/db/recordset'
import { chatMessages } from '../../../../core/db/schema'
import type { Applied, Change, Projection, SequencedEvent } from '../types'
import { evolveMessage, type ChatEvent, type MessageState } from './projection'

/**
 * Applies a batch of `chat.*` events: loads every message the batch refers to in one query,
 * evolves them in memory in event order, and returns the one upsert that writes the changed ones
 * (rows bound as one JSON parameter, see recordset) for the batch to run.
 */
export async function applyChat(db: Db, events: SequencedEvent[]): Promise<Applied> {
  const chat: { ref: string; ev: ChatEvent }[] = []
  for (const { event, seq, storedAt } of events) {
    switch (event.type) {
      case 'chat.message.posted': {
        const postedAt = event.at && !Number.isNaN(Date.parse(event.at)) ? new Date(event.at) : storedAt
        chat.push({ ref: event.id, ev: { type: event.type, id: event.id, data: event.data, seq, postedAt } })
        break
      }
      case 'chat.message.deleted':
        chat.push({ ref: event.data.messageId, ev: { type: event.type, data: event.data } })
        break
      case 'score.submitted':
        throw new Error(`chat projection got ${event.type}`)
      default: {
        const never: never = event
        throw new Error(`unknown event ${JSON.stringify(never)}`)
      }
    }
  }
  if (chat.length === 0) return { changes: [] }

  const ids = [...new Set(chat.map((c) => c.ref))]
  const messages = new Map<string, MessageState>()
  const rows = await rowsOf<{ id: string; room: string; user_id: string; text: string; seq: string | number; posted_at: string | Date; deleted: boolean }>(
    db,
    lookupByKey(chatMessages, ['id'], ids.map((id) => ({ id }))),
  )
  for (const r of rows) {
    messages.set(r.id, { id: r.id, room: r.room, user: r.user_id, text: r.text, seq: Number(r.seq), postedAt: new Date(r.posted_at), deleted: r.deleted })
  }

  const changes: Change[] = []
  const dirty = new Map<string, MessageState>()
  for (const { ref, ev } of chat) {
    const r = evolveMessage(messages.get(ref), ev)
    if (!r) continue
    messages.set(ref, r.next)
    dirty.set(ref, r.next)
    changes.push({ channel: channelOf.chat(r.next.room), data: r.change })
  }

  if (dirty.size === 0) return { changes }
  const written = [...dirty.values()].map((m) => ({ ...m, postedAt: m.postedAt.toISOString() }))
  const columns = { id: 'text', room: 'text', user: 'text', text: 'text', seq: 'bigint', postedAt: 'timestamptz', deleted: 'boolean' }
  const write = (when: SQL) =>
    db
      .insert(chatMessages)
      .select(sql`select id, room, "user", text, seq, "postedAt", deleted from ${recordset('m', columns, written)} where ${when}`)
      .onConflictDoUpdate({ target: chatMessages.id, set: { deleted: sql`excluded.deleted` } })
  return { changes, write }
}

/** The chat read model: `chat.*` events into chat_messages. */
export const chatProjection: Projection = { name: 'chat', area: 'chat', apply: applyChat }
