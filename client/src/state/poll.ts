import type { ChannelSnapshots, ChannelUpdates } from '../protocol'
import type { StateHelper } from './helper'

export type PollState = ChannelSnapshots['poll']
type PollView = NonNullable<PollState>

/** A poll past its `closesAt` is closed, with or without a `poll.closed` event (as the server shows it). */
export function closedByTime(p: PollView, now: number): PollView {
  if (p.status !== 'open' || p.closesAt === undefined || Date.parse(p.closesAt) > now) return p
  return { ...p, status: 'closed', closedAt: p.closesAt }
}

/** Polls: every update carries the whole poll. */
export const poll: StateHelper<PollState, ChannelUpdates['poll']> = {
  apply: (_, u) => u.poll,
  at: (state, now) => (state === null ? null : closedByTime(state, now)),
  changesAt: (state) => (state?.status === 'open' && state.closesAt !== undefined ? Date.parse(state.closesAt) : undefined),
}
