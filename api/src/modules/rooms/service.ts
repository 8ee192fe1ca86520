import { and, desc, eq, lt } from 'drizzle-orm'
import { channelOf } from '../../../../core/channels'
import type { Db } from '../../../../core/db/client'
import { channelVersions, chatMessages } from '../../../../core/db/schema'
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
    .select({ id: m.id, user: m.user, text: m.text, postedAt: m.postedAt })
    .from(m)
    .where(and(...where))
    .orderBy(desc(m.seq))
    .limit(opts.limit)
  return { room, messages: rows.map((r) => ({ ...r, postedAt: r.postedAt.toISOString() })) }
}

/** Messages in a room snapshot. */
export const SNAPSHOT_SIZE = 50

/**
 * The latest messages of a room with its channel version, read in one repeatable-read
 * transaction so the version describes exactly this data.
 */
export async function roomSnapshot(db: Db, room: string): Promise<{ version: number; epoch: string; data: RoomMessages }> {
  return db.transaction(
    async (tx) => {
      const q = tx as unknown as Db
      const [v] = await q
        .select({ version: channelVersions.version, epoch: channelVersions.epoch })
        .from(channelVersions)
        .where(eq(channelVersions.channel, channelOf.chat(room)))
      const data = await roomMessages(q, room, { limit: SNAPSHOT_SIZE })
      // A channel without a row has had no change: version 0 and no epoch yet ('').
      return { version: Number(v?.version ?? 0), epoch: v?.epoch ?? '', data }
    },
    { isolationLevel: 'repeatable read', accessMode: 'read only' },
  )
}
