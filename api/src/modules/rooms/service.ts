import { and, desc, eq, lt } from 'drizzle-orm'
import { channelOf } from '../../../../core/channels'
import type { Db } from '../../../../core/db/client'
import { readChannelSnapshot, type ChannelSnapshot } from '../channel-snapshot'
import { chatMessages } from '../../../../core/db/schema'
import { NotFound } from '../../errors'
import type { RoomMessages } from './model'

const m = chatMessages

/**
 * A room's messages, newest first, without deleted ones. `before` is a message id: only older
 * messages (by stream sequence) are returned. An unknown `before` is 404 `message_not_found`.
 */
export async function roomMessages(db: Db, room: string, opts: { before?: string; limit: number }): Promise<RoomMessages> {
  const where = [eq(m.room, room), eq(m.deleted, false)]
  if (opts.before !== undefined) {
    // A deleted message still anchors paging: clients may hold its id from an earlier page.
    const [anchor] = await db.select({ seq: m.seq }).from(m).where(and(eq(m.room, room), eq(m.id, opts.before)))
    if (!anchor) throw new NotFound('message_not_found', `no message ${opts.before} in room ${room}`)
    where.push(lt(m.seq, anchor.seq))
  }
  const rows = await db
    .select({ id: m.id, user: m.user, name: m.name, text: m.text, postedAt: m.postedAt })
    .from(m)
    .where(and(...where))
    .orderBy(desc(m.seq))
    .limit(opts.limit)
  return { room, messages: rows.map(({ name, ...r }) => ({ ...r, ...(name ? { name } : {}), postedAt: r.postedAt.toISOString() })) }
}

/**
 * What a `chat:<room>` snapshot holds: the latest `limit` messages, newest first. A client that
 * deletes one of them from a full list cannot know the message that moves up: it re-syncs.
 */
export type RoomSnapshot = RoomMessages & { limit: number }

/** Messages in a room snapshot. */
export const SNAPSHOT_SIZE = 50

/** The first page of the channel `chat:<room>` with its version and epoch (see readChannelSnapshot). */
export function roomSnapshot(db: Db, room: string): Promise<ChannelSnapshot<RoomSnapshot>> {
  return readChannelSnapshot(db, channelOf.chat(room), async (q) => ({ ...(await roomMessages(q, room, { limit: SNAPSHOT_SIZE })), limit: SNAPSHOT_SIZE }))
}
