import { and, asc, count, desc, eq, gt, lt, or, type SQL } from 'drizzle-orm'
import { channelOf } from '../../../../core/channels'
import type { Db } from '../../../../core/db/client'
import { readChannelSnapshot, type ChannelSnapshot } from '../channel-snapshot'
import { leaderboardEntries, leaderboards, type ScoreOperator, type SortOrder } from '../../../../core/db/schema'
import type { BoardPage, Entry, PlayerStanding } from './model'

/** A board's rules; a board without a config row is desc/best. */
export type BoardConfig = { board: string; order: SortOrder; operator: ScoreOperator; configured: boolean }

const e = leaderboardEntries

/** Reads a board's rules: the defaults when no admin stored any (see `leaderboards.configured`). */
export async function boardConfig(db: Db, board: string): Promise<BoardConfig> {
  const [row] = await db.select().from(leaderboards).where(eq(leaderboards.board, board))
  return row
    ? { board, order: row.sortOrder, operator: row.operator, configured: row.configured }
    : { board, order: 'desc', operator: 'best', configured: false }
}

/** Ranking order: score (per board), then who reached it first (reachedSeq), then player id. */
function ranking(order: SortOrder) {
  return [order === 'asc' ? asc(e.score) : desc(e.score), asc(e.reachedSeq), asc(e.player)]
}
/** The reverse of `ranking`, to walk upwards from a player. */
function reverseRanking(order: SortOrder) {
  return [order === 'asc' ? desc(e.score) : asc(e.score), desc(e.reachedSeq), desc(e.player)]
}

/** Rows ranked strictly before or after (score, reachedSeq, player) under `order`. */
function rankedOn(side: 'before' | 'after', order: SortOrder, s: { score: number; reachedSeq: number; player: string }): SQL {
  const [less, more] = side === 'before' ? [lt, gt] : [gt, lt]
  return or(
    order === 'asc' ? less(e.score, s.score) : more(e.score, s.score),
    and(eq(e.score, s.score), less(e.reachedSeq, s.reachedSeq)),
    and(eq(e.score, s.score), eq(e.reachedSeq, s.reachedSeq), less(e.player, s.player)),
  )!
}

/** One page of a board. An unknown board is an empty page. Ranks are 1-based positions. */
export async function leaderboardPage(db: Db, board: string, page: { limit: number; offset: number }): Promise<BoardPage> {
  const cfg = await boardConfig(db, board)
  const rows = await db
    .select({ player: e.player, score: e.score })
    .from(e)
    .where(eq(e.board, board))
    .orderBy(...ranking(cfg.order))
    .limit(page.limit)
    .offset(page.offset)
  return {
    board,
    order: cfg.order,
    operator: cfg.operator,
    entries: rows.map((r, i) => ({ rank: page.offset + i + 1, player: r.player, score: r.score })),
  }
}

/**
 * A player's rank and neighbours, or undefined when the player has no score on the board. The
 * rank is one plus a count of better entries (index-backed), not a scan of the board.
 */
export async function playerStanding(db: Db, board: string, player: string, neighbours: number): Promise<PlayerStanding | undefined> {
  const cfg = await boardConfig(db, board)
  const [me] = await db
    .select({ player: e.player, score: e.score, reachedSeq: e.reachedSeq })
    .from(e)
    .where(and(eq(e.board, board), eq(e.player, player)))
  if (!me) return undefined
  const [{ n }] = await db.select({ n: count() }).from(e).where(and(eq(e.board, board), rankedOn('before', cfg.order, me)))
  const rank = Number(n) + 1
  let above: Entry[] = []
  let below: Entry[] = []
  if (neighbours > 0) {
    const up = await db
      .select({ player: e.player, score: e.score })
      .from(e)
      .where(and(eq(e.board, board), rankedOn('before', cfg.order, me)))
      .orderBy(...reverseRanking(cfg.order))
      .limit(neighbours)
    above = up.map((r, i) => ({ rank: rank - i - 1, player: r.player, score: r.score })).reverse()
    const down = await db
      .select({ player: e.player, score: e.score })
      .from(e)
      .where(and(eq(e.board, board), rankedOn('after', cfg.order, me)))
      .orderBy(...ranking(cfg.order))
      .limit(neighbours)
    below = down.map((r, i) => ({ rank: rank + i + 1, player: r.player, score: r.score }))
  }
  return { board, player, rank, score: me.score, above, below }
}

/** Entries in a leaderboard snapshot. */
export const SNAPSHOT_SIZE = 100

/** The first page of the channel `leaderboard:<board>` with its version and epoch (see readChannelSnapshot). */
export function leaderboardSnapshot(db: Db, board: string): Promise<ChannelSnapshot<BoardPage>> {
  return readChannelSnapshot(db, channelOf.leaderboard(board), (q) => leaderboardPage(q, board, { limit: SNAPSHOT_SIZE, offset: 0 }))
}
