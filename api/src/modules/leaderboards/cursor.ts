import { TypeCompiler } from '@sinclair/typebox/compiler'
import { ActorId } from '../../../../core/events'
import { isPeriodKey, type Reset } from '../../../../core/periods'
import { decodePageCursor, encodePageCursor } from '../page-cursor'

const playerCheck = TypeCompiler.Compile(ActorId)

/**
 * The deepest rank a cursor may carry. A rank counts rows of one board's period, and no Postgres
 * table holds 2^48 rows (at most 2^32 pages of at most 1,169 tuples each, with 32 kB blocks, is
 * under 2^43): a larger rank is forged. Far enough below 2^53 that every rank a page numbers from
 * it (at most 100 more) is an exact integer: 2^53 - 1 passed as a safe integer, and its page
 * numbered its entries 2^53, 2^53, 2^53 + 2.
 */
export const MAX_CURSOR_RANK = 2 ** 48

/** Where a page ended: the ranking key of its last entry and that entry's rank. */
export type PagePosition = { board: string; period: string; score: number; reachedSeq: number; player: string; rank: number }

/**
 * The opaque `next`/`after` cursor of leaderboard pages: base64url of the JSON array
 * [board, score, reachedSeq, player, rank, period]. The key (score, reachedSeq, player) is the board's
 * ranking, so the next page is "rows ranked after it" whatever its depth; the rank lets that page
 * number its entries without counting every row above it.
 */
export function encodeCursor(p: PagePosition): string {
  return encodePageCursor([p.board, p.score, p.reachedSeq, p.player, p.rank, p.period])
}

/**
 * Reads a cursor of `board`; anything else (garbled, forged shape, another board's, a player that
 * is no player id, a period the board does not have, a rank above MAX_CURSOR_RANK) is 422
 * `invalid_request` naming `after`.
 */
export function decodeCursor(cursor: string, { board, reset }: { board: string; reset: Reset }): PagePosition {
  return decodePageCursor(cursor, 6, `after must be the \`next\` cursor of a previous page of board ${board}`, ([b, score, reachedSeq, player, rank, period]) => {
    const ok =
      b === board &&
      typeof score === 'number' &&
      Number.isFinite(score) &&
      Number.isSafeInteger(reachedSeq) &&
      (reachedSeq as number) >= 0 &&
      playerCheck.Check(player) &&
      Number.isSafeInteger(rank) &&
      (rank as number) >= 1 &&
      (rank as number) <= MAX_CURSOR_RANK &&
      typeof period === 'string' &&
      (reset === 'none' ? period === '' : isPeriodKey(reset, period))
    return ok ? { board, period: period as string, score: score as number, reachedSeq: reachedSeq as number, player: player as string, rank: rank as number } : undefined
  })
}
