import { bigint, pgTable, primaryKey, text } from 'drizzle-orm/pg-core'

/**
 * How many reactions each emoji got on a stream, over its whole history: one row per (stream,
 * emoji), written by the reactions projection in its batch statement (so each `reaction.sent`
 * counts exactly once). `emoji` is one emoji grapheme as sent (`❤` and `❤️` are two emojis).
 */
export const reactionTotals = pgTable(
  'reaction_totals',
  {
    stream: text('stream').notNull(),
    emoji: text('emoji').notNull(),
    count: bigint('count', { mode: 'number' }).notNull(),
  },
  (t) => [primaryKey({ columns: [t.stream, t.emoji] })],
)
