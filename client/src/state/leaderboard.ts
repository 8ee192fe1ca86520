import type { ChannelSnapshots, ChannelUpdates } from '../protocol'
import { RESYNC, type StateHelper } from './helper'

export type LeaderboardState = ChannelSnapshots['leaderboard']
type Entry = LeaderboardState['entries'][number]

/**
 * Leaderboards: the top `limit` entries, kept exact. A changed player is placed by score, then by
 * reachedSeq (who reached the score first), as the server ranks. What cannot be known locally is
 * asked for again: a shown player falling below the last shown entry of a board with more players
 * (who moves up?), or a change without a reachedSeq (stored before it existed).
 */
export const leaderboard: StateHelper<LeaderboardState, ChannelUpdates['leaderboard']> = {
  apply(state, u) {
    // A score of another period (one stored just before a rollover) is not on the shown board;
    // the server re-syncs the board itself when its period ends.
    if ((u.period ?? null) !== state.period) return state
    const rest = state.entries.filter((e) => e.player !== u.player)
    const wasShown = rest.length < state.entries.length
    // Changes stored before reachedSeq existed (still in the channel's history after an upgrade)
    // cannot be placed among ties, nor tie-broken later.
    if (u.reachedSeq === undefined) return RESYNC
    const entry: Entry = { rank: 0, player: u.player, score: u.score, reachedSeq: u.reachedSeq }
    const before = (a: Entry, b: Entry) =>
      a.score !== b.score ? (state.order === 'asc' ? a.score < b.score : a.score > b.score) : a.reachedSeq !== b.reachedSeq ? a.reachedSeq < b.reachedSeq : a.player < b.player
    let at = rest.findIndex((e) => before(entry, e))
    if (at < 0) at = rest.length
    let more = state.more
    if (at === rest.length && more) {
      // Below every shown entry of a board that has more: not shown, unless it was, and then
      // someone unseen may rank above it now.
      return wasShown ? RESYNC : state
    }
    const entries = [...rest.slice(0, at), entry, ...rest.slice(at)]
    if (entries.length > state.limit) {
      entries.length = state.limit
      more = true
    }
    return { ...state, more, entries: entries.map((e, i) => (e.rank === i + 1 ? e : { ...e, rank: i + 1 })) }
  },
}
