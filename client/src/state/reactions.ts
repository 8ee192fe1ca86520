import type { ChannelSnapshots, ChannelUpdates } from '../protocol'
import type { StateHelper } from './helper'

export type ReactionsState = ChannelSnapshots['reactions']

/** Reactions: each update names the new running total of every emoji it counted. */
export const reactions: StateHelper<ReactionsState, ChannelUpdates['reactions']> = {
  apply: (state, u) => ({ ...state, totals: { ...state.totals, ...u.totals } }),
}
