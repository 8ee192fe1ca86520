import type { ChannelSnapshots, ChannelUpdates } from '../protocol'
import { RESYNC, type StateHelper } from './helper'

export type LeaderboardState = ChannelSnapshots['leaderboard']
type Entry = LeaderboardState['entries'][number]
type Known = Omit<Entry, 'rank'>

/**
 * Leaderboards: the top `limit` entries, kept exact. A changed player is placed by score, then by
 * reachedSeq (who reached the score first), as the server ranks.
 *
 * The state holds the board's top as a known list: the shown `entries`, then the snapshot's
 * `reserve` (hidden entries ranked right after them, when the server sent one). The known list is
 * always exactly the board's first players, and `reserve.more` says whether the board has others:
 * - a player moving within the known list, or entering it from outside (ranking before its last
 *   entry), keeps it exact; past `reserve.size` hidden entries the last is let go (it becomes
 *   unknown). Never more than the snapshot's: a board with others then always has some (players
 *   leave a board only with its period), so `reserve.more` stays exact;
 * - a known player dropping below the last known entry of a board with others leaves the list
 *   (someone unknown may rank above it now): the list shrinks by one;
 * - an unknown player ranking below the last known entry changes nothing known.
 * The shown top is the first `limit` known entries. What cannot be known locally is asked for
 * again: fewer known entries than `limit` on a board with others (who moves up?), or a change
 * without a reachedSeq (stored before it existed). A snapshot without a reserve (older servers)
 * is a known list of the shown entries alone: every shown player falling out of the top re-syncs.
 */
export const leaderboard: StateHelper<LeaderboardState, ChannelUpdates['leaderboard']> = {
  apply(state, u) {
    // A score of another period (one stored just before a rollover) is not on the shown board;
    // the server re-syncs the board itself when its period ends.
    if ((u.period ?? null) !== state.period) return state
    // Changes stored before reachedSeq existed (still in the channel's history after an upgrade)
    // cannot be placed among ties, nor tie-broken later.
    if (u.reachedSeq === undefined) return RESYNC
    const { reserve } = state
    const known: Known[] = reserve ? [...state.entries, ...reserve.entries] : [...state.entries]
    // Whether the board has players outside the known list.
    let beyond = reserve ? reserve.more : state.more
    const was = known.findIndex((e) => e.player === u.player)
    if (was >= 0) known.splice(was, 1)
    const entry: Known = { player: u.player, score: u.score, reachedSeq: u.reachedSeq }
    const before = (a: Known, b: Known) =>
      a.score !== b.score ? (state.order === 'asc' ? a.score < b.score : a.score > b.score) : a.reachedSeq !== b.reachedSeq ? a.reachedSeq < b.reachedSeq : a.player < b.player
    const at = known.findIndex((e) => before(entry, e))
    if (at >= 0) known.splice(at, 0, entry)
    else if (!beyond) known.push(entry)
    // Below every known entry of a board with others: unknown now, and if it was known, nothing
    // says who (if anyone) ranks between the last known entry and it.
    else if (was < 0) return state
    if (known.length < state.limit && beyond) return RESYNC
    const kept = state.limit + (reserve ? reserve.size : 0)
    if (known.length > kept) {
      known.length = kept
      beyond = true
    }
    const entries = known.slice(0, state.limit).map((e, i) => ('rank' in e && e.rank === i + 1 ? (e as Entry) : { rank: i + 1, player: e.player, score: e.score, reachedSeq: e.reachedSeq }))
    const more = known.length > state.limit || beyond
    if (!reserve) return { ...state, more, entries }
    const hidden = known.slice(state.limit).map((e) => ('rank' in e ? { player: e.player, score: e.score, reachedSeq: e.reachedSeq } : e))
    return { ...state, more, entries, reserve: { size: reserve.size, entries: hidden, more: beyond } }
  },
}
