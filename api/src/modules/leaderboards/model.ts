import { t } from 'elysia'
import { ActorId, Name } from '../../../../core/events'
import { integerParam } from '../../params'

export const SortOrder = t.Union([t.Literal('desc'), t.Literal('asc')])
export const ScoreOperator = t.Union([t.Literal('best'), t.Literal('latest'), t.Literal('sum')])
export const Reset = t.Union([t.Literal('none'), t.Literal('daily'), t.Literal('weekly'), t.Literal('monthly')])
const PeriodParam = t.Optional(
  t.String({
    maxLength: 16,
    description: 'current (default), previous, or a period key of the board: YYYY-MM-DD (daily), YYYY-Www (weekly, ISO), YYYY-MM (monthly); UTC',
  }),
)

export const BoardParams = t.Object({ board: Name })
export const PlayerParams = t.Object({ board: Name, player: ActorId })

/**
 * Deepest `offset` a page may start at: Postgres walks every skipped row, so an offset costs time
 * in proportion to it. Deeper pages are reached with `after` (keyset), whose cost does not grow.
 */
export const MAX_OFFSET = 10_000

export const PageQuery = t.Object({
  limit: integerParam('limit', { minimum: 1, maximum: 100, default: 10 }),
  offset: t.Optional(integerParam('offset', { minimum: 0, maximum: MAX_OFFSET, description: 'entries to skip (default 0); not with after' })),
  period: PeriodParam,
  after: t.Optional(
    t.String({
      maxLength: 512,
      error: 'after must be the `next` cursor of a previous page',
      description: 'the `next` of the previous page: the page starts after its last entry (any depth, same cost)',
    }),
  ),
})
export type PageQuery = typeof PageQuery.static
export const NeighboursQuery = t.Object({ neighbours: integerParam('neighbours', { minimum: 0, maximum: 25, default: 2 }), period: PeriodParam })

export const Entry = t.Object({ rank: t.Integer({ minimum: 1 }), player: t.String(), score: t.Number() })
export type Entry = typeof Entry.static

export const BoardPage = t.Object({
  board: t.String(),
  order: SortOrder,
  operator: ScoreOperator,
  reset: Reset,
  period: t.Union([t.String(), t.Null()], { description: 'the period these standings are of (null: a board without periods)' }),
  entries: t.Array(Entry),
})
export type BoardPage = typeof BoardPage.static

/** A board entry as snapshots carry it: with the sequence its score was reached at (equal scores rank by it). */
export type SnapshotEntry = Entry & { reachedSeq: number }

/**
 * The entries ranked right after a snapshot's shown ones (in order, without ranks), and whether the
 * board has players after them. Not shown: a client keeps them to fill the top when a shown player
 * drops below the last shown entry, instead of asking for a snapshot again. Exact as of the
 * snapshot's version; a client keeps them exact from updates (see client/src/state/leaderboard.ts).
 * `size` is the most entries a reserve holds: a snapshot's has `size` entries whenever `more` is
 * true, and a client keeps at most `size` (so a board with players after them always has some).
 */
export type BoardReserve = { size: number; entries: Omit<SnapshotEntry, 'rank'>[]; more: boolean }

/**
 * What a `leaderboard:<board>` snapshot holds: the top `limit` entries, each with the sequence its
 * score was reached at (equal scores rank by it), whether the board has more players than shown,
 * and (servers since the reserve; absent before) the `reserve` of entries ranked after them. With
 * these, a client applies updates to exactly what a new snapshot would show, or knows when it
 * cannot (a shown player fell below the last shown entry and below every reserve entry of a board
 * with more).
 */
export type BoardSnapshot = Omit<BoardPage, 'entries'> & { entries: SnapshotEntry[]; limit: number; more: boolean; reserve?: BoardReserve }

/** A page of GET /v1/leaderboards/:board: the entries and the cursor to the following page. */
export const RankedPage = t.Composite([
  BoardPage,
  t.Object({
    next: t.Union([t.String(), t.Null()], { description: 'pass as `after` for the following page; null: this page ends the board' }),
  }),
])
export type RankedPage = typeof RankedPage.static

export const PlayerStanding = t.Object({
  board: t.String(),
  player: t.String(),
  period: t.Union([t.String(), t.Null()]),
  rank: t.Integer({ minimum: 1 }),
  score: t.Number(),
  above: t.Array(Entry, { description: 'better-ranked neighbours, best first' }),
  below: t.Array(Entry, { description: 'worse-ranked neighbours, best first' }),
})
export type PlayerStanding = typeof PlayerStanding.static
