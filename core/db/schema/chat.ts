import { bigint, boolean, index, pgTable, text, timestamp } from 'drizzle-orm/pg-core'

/** Chat history. A message's id is its event's id; `seq` (stream sequence) orders a room. */
export const chatMessages = pgTable(
  'chat_messages',
  {
    id: text('id').primaryKey(),
    room: text('room').notNull(),
    user: text('user_id').notNull(),
    text: text('text').notNull(),
    seq: bigint('seq', { mode: 'number' }).notNull(),
    postedAt: timestamp('posted_at', { withTimezone: true }).notNull(),
    deleted: boolean('deleted').notNull().default(false),
  },
  (t) => [index('chat_messages_room_seq').on(t.room, t.seq)],
)
