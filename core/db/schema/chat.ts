import { bigint, boolean, index, pgTable, primaryKey, text, timestamp } from 'drizzle-orm/pg-core'

/**
 * Chat history. A message's id is its event's id, unique within its room (chat is partitioned by
 * room, and ids are only unique per publisher: two rooms may hold the same id); `seq` (stream
 * sequence) orders a room. `by` is the principal that posted it (see Caller; '' for messages
 * posted before principals were recorded): the same id posted again in the room by the same
 * principal is a resend, by another a collision (see the chat projection).
 */
export const chatMessages = pgTable(
  'chat_messages',
  {
    id: text('id').notNull(),
    room: text('room').notNull(),
    by: text('posted_by').notNull().default(''),
    user: text('user_id').notNull(),
    /** The poster's display name when it was posted (a user token's `name`), or null. */
    name: text('user_name'),
    text: text('text').notNull(),
    seq: bigint('seq', { mode: 'number' }).notNull(),
    postedAt: timestamp('posted_at', { withTimezone: true }).notNull(),
    deleted: boolean('deleted').notNull().default(false),
  },
  (t) => [primaryKey({ columns: [t.room, t.id] }), index('chat_messages_room_seq').on(t.room, t.seq)],
)

/** Rooms that are not public. A room without a row is public. */
export const roomSettings = pgTable('room_settings', {
  room: text('room').primaryKey(),
  visibility: text('visibility').$type<'public' | 'private'>().notNull(),
  updatedAt: timestamp('updated_at', { withTimezone: true }).notNull().defaultNow(),
})
