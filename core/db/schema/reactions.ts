import { bigint, index, pgTable, primaryKey, text, timestamp } from 'drizzle-orm/pg-core'

/**
 * How many reactions each emoji got on a stream, over its whole history: one row per (stream,
 * emoji), written by the reactions projection in its batch statement (so each reaction counts
 * exactly once). `emoji` is one emoji grapheme as sent (`❤` and `❤️` are two emojis).
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

/**
 * The reactions counted lately, by (stream, publisher, id), with the time their message was stored:
 * what de-duplicates a reaction resent within the de-duplication window once API nodes store
 * reactions in batches (JetStream de-duplicates a batch's message, not the reactions in it). The
 * reactions projection reads and writes it in its batch statement, and drops each stream's rows that
 * no later reaction can match (older than the oldest in the batch minus the window).
 */
export const reactionDedup = pgTable(
  'reaction_dedup',
  {
    stream: text('stream').notNull(),
    by: text('by').notNull(),
    id: text('id').notNull(),
    storedAt: timestamp('stored_at', { withTimezone: true, precision: 3 }).notNull(),
  },
  (t) => [primaryKey({ columns: [t.stream, t.by, t.id] }), index('reaction_dedup_stream_stored').on(t.stream, t.storedAt)],
)
