import { sql } from 'drizzle-orm'
import { bigint, index, integer, jsonb, pgTable, text, timestamp } from 'drizzle-orm/pg-core'
import type { MatchStanding, MatchStatus, Seat } from '../../matches'

/**
 * Matches (the matches projection, from `match.*` events): one row per match with its seats in it
 * (at most 100), so a batch reads and writes a match in one row. Seat times are epoch milliseconds
 * of event times (see core/matches.ts).
 */
export const matches = pgTable(
  'matches',
  {
    match: text('match').primaryKey(),
    mode: text('mode').notNull(),
    maxPlayers: integer('max_players').notNull(),
    properties: jsonb('properties').$type<Record<string, string | number | boolean>>().notNull().default({}),
    status: text('status').$type<MatchStatus>().notNull(),
    players: jsonb('players').$type<Seat[]>().notNull().default([]),
    /** Seated players: what the listing shows without reading `players`. */
    playerCount: integer('player_count').notNull().default(0),
    /** The players seated when the match started (null before): only their results count. */
    lineup: jsonb('lineup').$type<string[]>(),
    results: jsonb('results').$type<MatchStanding[]>(),
    /** Players a finish named who were not in the lineup: their results were ignored. */
    ignored: jsonb('ignored').$type<string[]>(),
    /** The board the results were scored on (the mode's, when the finish applied); null: none. */
    board: text('board'),
    createdAt: timestamp('created_at', { withTimezone: true }).notNull(),
    startedAt: timestamp('started_at', { withTimezone: true }),
    endedAt: timestamp('ended_at', { withTimezone: true }),
    /** Stream sequence of `match.created`: the listing's order and cursor. */
    createdSeq: bigint('created_seq', { mode: 'number' }).notNull(),
    /** The earliest grace end of a disconnected player (event time); what API nodes sweep. */
    graceUntil: timestamp('grace_until', { withTimezone: true }),
  },
  (t) => [
    // `GET /v1/matches?status=&mode=`: pages in creation order, of one mode or of all.
    index('matches_by_status').on(t.status, t.mode, t.createdSeq),
    index('matches_by_status_seq').on(t.status, t.createdSeq),
    index('matches_grace').on(t.graceUntil).where(sql`grace_until is not null`),
  ],
)

/** A game mode and the board its matches' results are scored on (PUT /admin/modes/:mode). */
export const matchModes = pgTable('match_modes', {
  mode: text('mode').primaryKey(),
  board: text('board').notNull(),
  updatedAt: timestamp('updated_at', { withTimezone: true }).notNull().defaultNow(),
})

/**
 * Events a projection derives and publishes to the event stream after its batch commits
 * (transactional outbox): a finished match's scores. Written in the batch's statement, so they are
 * there exactly when the batch is; published with `msg_id` as Nats-Msg-Id, so a publish repeated
 * within the dedup window (a crash between publish and delete, the sweeper) is stored once.
 * `payload` is the StoredEvent JSON.
 */
export const eventOutbox = pgTable(
  'event_outbox',
  {
    msgId: text('msg_id').primaryKey(),
    payload: text('payload').notNull(),
    createdAt: timestamp('created_at', { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [index('event_outbox_created').on(t.createdAt)],
)
