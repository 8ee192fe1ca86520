import type { Reset } from '../../periods'
import { sql } from 'drizzle-orm'
import { bigint, boolean, doublePrecision, index, pgTable, primaryKey, text, timestamp } from 'drizzle-orm/pg-core'

export type SortOrder = 'desc' | 'asc'
export type ScoreOperator = 'best' | 'latest' | 'sum'
export type { Reset } from '../../periods'

/**
 * A board's rules. A board with no row here is desc/best. Workers add a row (`configured` false,
 * the rules they used) when they write a board's first scores, and set `hasScores` in the same
 * statement as its entries: the row that the admin API and the workers both write, so that a rules
 * change and a board's first scores cannot pass each other (see the leaderboards projection).
 */
export const leaderboards = pgTable('leaderboards', {
  board: text('board').primaryKey(),
  sortOrder: text('sort_order').$type<SortOrder>().notNull().default('desc'),
  operator: text('operator').$type<ScoreOperator>().notNull().default('best'),
  /** Periods: scores count per day, ISO week or month of their event time (see core/periods.ts). */
  reset: text('reset').$type<Reset>().notNull().default('none'),
  /** Entries were written under these rules: they can no longer change. */
  hasScores: boolean('has_scores').notNull().default(false),
  /** Set by an admin (false: a worker's row holding the defaults). */
  configured: boolean('configured').notNull().default(true),
  updatedAt: timestamp('updated_at', { withTimezone: true }).notNull().defaultNow(),
})

/**
 * One player's standing on a board in one period ('' for a board without periods). `reachedSeq` is
 * the stream sequence of the event that set the current score: ties rank the earlier holder first,
 * deterministically across rebuilds.
 */
export const leaderboardEntries = pgTable(
  'leaderboard_entries',
  {
    board: text('board').notNull(),
    period: text('period').notNull().default(''),
    player: text('player').notNull(),
    score: doublePrecision('score').notNull(),
    reachedSeq: bigint('reached_seq', { mode: 'number' }).notNull(),
    updatedAt: timestamp('updated_at', { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [
    primaryKey({ columns: [t.board, t.player, t.period] }),
    // One index per sort order, each in the whole ranking order (score, reachedSeq, then player),
    // so a page or snapshot is an index scan that stops after offset + limit rows whatever the
    // planner's statistics say. With only (board, period, score, reached_seq), every page needed a
    // sort (a desc board's score desc, reached_seq asc is no scan of it; the player tie-break none
    // at all), and for a board or period the statistics did not know yet (newer than the last
    // analyze) the planner sorted the whole board: 20,000 rows read per 10-entry page
    // (bench/findings.md). `player || ''`, not player: the workers' key lookups (board = and
    // player =, see lookupByKey) could otherwise use these indexes too, walking the board, at a cost
    // that ties with the primary key's; ranking() orders by the same expression. NULLS FIRST as
    // `order by score desc` means it (scores are never null, but the order must match).
    index('leaderboard_entries_rank').on(t.board, t.period, t.score, t.reachedSeq, sql`(${t.player} || '')`),
    index('leaderboard_entries_rank_desc').on(t.board, t.period, t.score.desc().nullsFirst(), t.reachedSeq, sql`(${t.player} || '')`),
  ],
)

/**
 * Scores derived by other projections (a finished match's results, `by = "matches"`) that the
 * leaderboards projection applied, by de-duplication id (`matches/result.<match>.<i>`): a copy
 * published again after JetStream's de-duplication window (its outbox row outlived the window) is
 * skipped, so each result counts once whatever the window.
 */
export const derivedScores = pgTable('derived_scores', {
  id: text('id').primaryKey(),
  /** Stream sequence of the copy that was applied. */
  seq: bigint('seq', { mode: 'number' }).notNull(),
})
