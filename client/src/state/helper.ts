/** An update the state cannot absorb exactly: only a fresh snapshot can say what the state is. */
export const RESYNC: unique symbol = Symbol('resync')

/**
 * How one kind of channel turns its snapshot and updates into the state a client holds. The
 * contract, checked by state.property.test.ts: after any sequence of updates (and snapshots), the
 * state equals what the server would snapshot at that moment, or `apply` said RESYNC. (A
 * leaderboard's hidden `reserve` may hold fewer entries than a fresh snapshot's: those it holds are
 * exact; see leaderboard.ts.)
 *
 * Helpers never mutate: every change gives a new state object (a UI can compare references).
 */
export type StateHelper<S, U> = {
  /** Applies one update (versions `from`..`version` of the channel, merged where it is windowed). */
  apply(state: S, update: U, now: number): S | typeof RESYNC
  /** The state as of `now`, for states that change with time alone (a poll closing at `closesAt`). */
  at?(state: S, now: number): S
  /** When `at` next gives a different state, if it ever does. */
  changesAt?(state: S): number | undefined
}
