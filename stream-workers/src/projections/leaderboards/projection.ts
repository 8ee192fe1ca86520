import type { ScoreOperator, SortOrder } from '../../../../core/db/schema'
import type { Reset } from '../../../../core/periods'

/** A player's current standing: the score and the stream sequence that set it (tie-breaker). */
export type Standing = { score: number; reachedSeq: number }

/** How a board ranks and combines scores, and the periods it keeps standings for. */
export type BoardRules = { sortOrder: SortOrder; operator: ScoreOperator; reset: Reset }

/** A board without a config row ranks high scores first, keeps each player's best, forever. */
export const defaultRules: BoardRules = { sortOrder: 'desc', operator: 'best', reset: 'none' }

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
