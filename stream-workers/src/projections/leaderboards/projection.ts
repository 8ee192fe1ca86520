import type { ScoreOperator, SortOrder } from '../../../../core/db/schema'
import type { Reset } from '../../../../core/periods'

/** A player's current standing: the score and the stream sequence that set it (tie-breaker). */
export type Standing = { score: number; reachedSeq: number }

/** How a board ranks and combines scores, and the periods it keeps standings for. */
export type BoardRules = { sortOrder: SortOrder; operator: ScoreOperator; reset: Reset }

/** A board without a config row ranks high scores first, keeps each player's best, forever. */
export const defaultRules: BoardRules = { sortOrder: 'desc', operator: 'best', reset: 'none' }

/**
 * Why a sum board refuses an increment (a dead letter), or undefined. Totals are float8 in
 * Postgres and numbers in JS: integers are exact up to Number.MAX_SAFE_INTEGER (2^53 - 1) only,
 * and past it small increments are silently lost (9e15 + 1 + 1 ...), so an increment that would
 * take a total past it, either way, is refused instead: every total kept is the exact sum of the
 * increments applied (integer ones; fractions round as floats do). Decided from the standing
 * alone, so a rebuild refuses the same ones.
 */
export function sumRefusal(current: Standing | undefined, score: number, rules: Pick<BoardRules, 'operator'>, board: string, player: string): string | undefined {
  if (rules.operator !== 'sum' || !current) return undefined
  const total = current.score + score
  if (Math.abs(total) <= Number.MAX_SAFE_INTEGER) return undefined
  const limit = total > 0 ? `${Number.MAX_SAFE_INTEGER} (Number.MAX_SAFE_INTEGER)` : `${-Number.MAX_SAFE_INTEGER} (-Number.MAX_SAFE_INTEGER)`
  return `sum board ${board}: ${player}'s total ${current.score} + ${score} would pass ${limit}, beyond which totals lose increments`
}

/**
 * The standing after a submitted score, or null when the submission changes nothing.
 * - best: replaces only a strictly better score (an equal score keeps the earlier reachedSeq, so
 *   the earlier holder keeps its place in a tie);
 * - latest: always replaces, even with an equal score (reachedSeq moves to the new event);
 * - sum: adds; adding 0 to an existing standing is no change.
 * A player's first submission always creates a standing.
 */
export function nextScore(current: Standing | undefined, incoming: { score: number; seq: number }, rules: Pick<BoardRules, 'sortOrder' | 'operator'>): Standing | null {
  if (!current) return { score: incoming.score, reachedSeq: incoming.seq }
  switch (rules.operator) {
    case 'best': {
      const better = rules.sortOrder === 'desc' ? incoming.score > current.score : incoming.score < current.score
      return better ? { score: incoming.score, reachedSeq: incoming.seq } : null
    }
    case 'latest':
      return { score: incoming.score, reachedSeq: incoming.seq }
    case 'sum':
      return incoming.score === 0 ? null : { score: current.score + incoming.score, reachedSeq: incoming.seq }
    default: {
      const never: never = rules.operator
      throw new Error(`unknown score operator ${String(never)}`)
    }
  }
}
