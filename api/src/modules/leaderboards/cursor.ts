import { TypeCompiler } from '@sinclair/typebox/compiler'
import { ActorId } from '../../../../core/events'
import { isPeriodKey, type Reset } from '../../../../core/periods'
import { Invalid } from '../../errors'

const playerCheck = TypeCompiler.Compile(ActorId)

/** Where a page ended: the ranking key of its last entry and that entry's rank. */
export type PagePosition = { board: string; period: string; score: number; reachedSeq: number; player: string; rank: number }

/**
 * The opaque `next`/`after` cursor of leaderboard pages: base64url of the JSON array
 * [board, score, reachedSeq, player, rank]. The key (score, reachedSeq, player) is the board's
 * ranking, so the next page is "rows ranked after it" whatever its depth; the rank lets that page
 * number its entries without counting every row above it.
 */
export function encodeCursor(p: PagePosition): string {
  return Buffer.from(JSON.stringify([p.board, p.score, p.reachedSeq, p.player, p.rank, p.period])).toString('base64url')
}

/**
 * Reads a cursor of `board`; anything else (garbled, forged shape, another board's, a player that
 * is no player id, a period the board does not have) is 422 naming `after`.
 */
export function decodeCursor(cursor: string, { board, reset }: { board: string; reset: Reset }): PagePosition {
  const message = `after must be the \`next\` cursor of a previous page of board ${board}`
  const bad = () => new Invalid('invalid_request', message, [{ path: '/after', message, in: 'query' }])
  let value: unknown
  try {
    value = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'))
  } catch {
    throw bad()
  }
  if (!Array.isArray(value) || value.length !== 6) throw bad()
  const [b, score, reachedSeq, player, rank, period] = value as unknown[]
  const ok =
    b === board &&
    typeof score === 'number' &&
    Number.isFinite(score) &&
    Number.isSafeInteger(reachedSeq) &&
    (reachedSeq as number) >= 0 &&
    playerCheck.Check(player) &&
    Number.isSafeInteger(rank) &&
    (rank as number) >= 1 &&
    typeof period === 'string' &&
    (reset === 'none' ? period === '' : isPeriodKey(reset, period))
  if (!ok) throw bad()
  return { board, period: period as string, score: score as number, reachedSeq: reachedSeq as number, player: player as string, rank: rank as number }
}
