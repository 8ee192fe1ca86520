import type { ReactionsChange } from '../../../../core/channels'

/**
 * What a batch of reactions did to one stream so far, which is also the change the batch announces
 * on `reactions:<stream>`: `counts`, the reactions per emoji in the batch; `totals`, each of those
 * emojis' running total after them.
 */
export type StreamTally = ReactionsChange

/** A stream's tally before the batch's first reaction. */
export const emptyTally = (): StreamTally => ({ counts: {}, totals: {} })

/**
 * The stream's tally after one more reaction with `emoji`. `before` is the emoji's total before
 * the batch (0 when the stream never got it); the batch's later reactions count on from the tally,
 * so `before` only matters for an emoji's first reaction in the batch.
 */
export function evolveTally(tally: StreamTally, emoji: string, before: number): StreamTally {
  return {
    counts: { ...tally.counts, [emoji]: (tally.counts[emoji] ?? 0) + 1 },
    totals: { ...tally.totals, [emoji]: (tally.totals[emoji] ?? before) + 1 },
  }
}
