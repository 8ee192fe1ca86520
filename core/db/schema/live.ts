import { sql } from 'drizzle-orm'
import { bigint, index, integer, jsonb, pgTable, primaryKey, text, timestamp } from 'drizzle-orm/pg-core'

/**
 * A stream's state (the streams projection, from `stream.*` events). `broadcast` counts its
 * broadcasts: each `stream.started` begins a new one, and the peak and unique viewers are those of
 * broadcast number `broadcast` (the current one while live, the last one while offline).
 */
export const streams = pgTable(
  'streams',
  {
    stream: text('stream').primaryKey(),
    status: text('status').$type<'live' | 'offline'>().notNull().default('offline'),
    title: text('title'),
    category: text('category'),
    /** Event time of the broadcast's `stream.started` / `stream.ended`. */
    startedAt: timestamp('started_at', { withTimezone: true }),
    endedAt: timestamp('ended_at', { withTimezone: true }),
    broadcast: integer('broadcast').notNull().default(0),
    viewers: integer('viewers').notNull().default(0),
    peakViewers: integer('peak_viewers').notNull().default(0),
    uniqueViewers: integer('unique_viewers').notNull().default(0),
  },
  // `GET /v1/streams?status=live` pages live streams by current viewers.
  (t) => [index('streams_live_by_viewers').on(t.viewers.desc(), t.stream).where(sql`status = 'live'`)],
)

/**
 * Who has watched a stream, and in which broadcast last: a user is a new unique viewer of
 * broadcast b when their row is missing or older than b. One row per (stream, user) rather than
 * per (stream, broadcast, user): the table grows with a stream's distinct viewers, not with every
 * broadcast they watch.
 */
export const streamViewers = pgTable(
  'stream_viewers',
  {
    stream: text('stream').notNull(),
    user: text('user_id').notNull(),
    broadcast: integer('broadcast').notNull(),
  },
  (t) => [primaryKey({ columns: [t.stream, t.user] })],
)

/**
 * Polls (the polls projection, from `poll.*` events). A vote for a poll that has not opened (yet)
 * makes a `pending` row that only counts it as ignored: stream, question and options come with
 * `poll.opened`. `votes[i]` counts option i.
 */
export const polls = pgTable(
  'polls',
  {
    poll: text('poll').primaryKey(),
    status: text('status').$type<'pending' | 'open' | 'closed'>().notNull(),
    stream: text('stream'),
    question: text('question'),
    options: jsonb('options').$type<string[]>().notNull().default([]),
    votes: jsonb('votes').$type<number[]>().notNull().default([]),
    ignoredVotes: integer('ignored_votes').notNull().default(0),
    openedAt: timestamp('opened_at', { withTimezone: true }),
    /** When it closes by itself (event time): votes from then on are ignored. */
    closesAt: timestamp('closes_at', { withTimezone: true }),
    closedAt: timestamp('closed_at', { withTimezone: true }),
  },
  // A stream's open polls, for its channel snapshot and REST answer.
  (t) => [index('polls_open_by_stream').on(t.stream, t.openedAt).where(sql`status = 'open'`)],
)

/** The vote that counted, per voter (`u:<sub>`) and poll: a voter's later votes are ignored. */
export const pollVotes = pgTable(
  'poll_votes',
  {
    poll: text('poll').notNull(),
    voter: text('voter').notNull(),
    option: integer('option').notNull(),
    /** Stream sequence of the vote. */
    seq: bigint('seq', { mode: 'number' }).notNull(),
  },
  (t) => [primaryKey({ columns: [t.poll, t.voter] })],
)
