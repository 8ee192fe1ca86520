import type { ChannelSnapshots, ChannelUpdates } from '../protocol'
import { RESYNC, type StateHelper } from './helper'

/** A match (null: no such match yet; `created` brings it). */
export type MatchState = ChannelSnapshots['match']
type Player = NonNullable<MatchState>['players'][number]

/** Seats lose their grace when the match is over: nobody is waited for any more. */
const noGrace = (players: Player[]) => players.map(({ graceUntil: _, ...p }) => p)

/**
 * Matches: each change names the match's status after it; seats change one player at a time. The
 * same rules as the server's state machine (core/matches.ts), checked by state.property.test.ts
 * against it.
 */
export const match: StateHelper<MatchState, ChannelUpdates['match']> = {
  apply(state, u) {
    if (u.kind === 'created') return u.match
    if (!state) return RESYNC
    const seats = (players: Player[]) => ({ ...state, players, status: u.status })
    switch (u.kind) {
      case 'joined':
        // Without `connected` (a change from before the join grace) the seat started connected.
        return seats([...state.players, { player: u.player, ready: false, connected: u.connected ?? true, ...(u.graceUntil !== undefined ? { graceUntil: u.graceUntil } : {}) }])
      case 'rejected':
        return state.status === u.status ? state : { ...state, status: u.status }
      case 'left':
        return seats(state.players.filter((p) => p.player !== u.player))
      case 'ready':
        return seats(state.players.map((p) => (p.player === u.player ? { ...p, ready: true } : p)))
      case 'connection':
        return seats(
          state.players.map((p) => {
            if (p.player !== u.player) return p
            const { graceUntil: _, ...seat } = p
            return { ...seat, connected: u.connected, ...(u.graceUntil !== undefined ? { graceUntil: u.graceUntil } : {}) }
          }),
        )
      case 'started':
        return { ...state, status: u.status, startedAt: u.at }
      case 'finished':
        return { ...state, status: u.status, players: noGrace(state.players), results: u.results, ...(u.ignored ? { ignored: u.ignored } : {}), endedAt: u.at }
      case 'aborted':
        return { ...state, status: u.status, players: noGrace(state.players), endedAt: u.at }
      default: {
        const never: never = u
        throw new Error(`unknown match change ${JSON.stringify(never)}`)
      }
    }
  },
}
