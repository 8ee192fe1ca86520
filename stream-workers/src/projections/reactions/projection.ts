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

/** One reaction as the projection applies it, from a `reaction.sent` or out of a `reaction.batched`. */
export type Reaction = {
  stream: string
  emoji: string
  /** Its publisher and id: what a resend repeats. */
  by: string
  id: string
  /** When JetStream stored its message (ms): the clock of the de-duplication window. */
  storedAt: number
  /**
   * How far back a reaction with the same (stream, by, id) makes this one a resend (the API node's
   * FANFARE_DEDUP_WINDOW_MS, carried by the batch). Undefined for a `reaction.sent` stored as its
   * own message: JetStream de-duplicated it by its msgID already.
   */
  dedupWindowMs?: number
}

/**
 * Whether a reaction is a resend of one already counted: the same (stream, by, id) counted at
 * `countedAt` (ms, its stored time), no more than the reaction's window before it. Past the window
 * a resent id is a new reaction, as JetStream treats a msgID past its de-duplication window. A
 * function of stored times only, so a rebuild decides every reaction as the live run did.
 */
export function isResend(r: Reaction, countedAt: number | undefined): boolean {
  return r.dedupWindowMs !== undefined && countedAt !== undefined && countedAt >= r.storedAt - r.dedupWindowMs
}
