import type { ChannelSnapshots, ChannelUpdates } from '../protocol'
import type { StateHelper } from './helper'

export type StreamState = ChannelSnapshots['stream']
type PollView = StreamState['polls'][number]

/** The server's order of a stream's open polls: the most recently opened first, then by id. */
const before = (a: PollView, b: PollView) => (a.openedAt !== b.openedAt ? a.openedAt > b.openedAt : a.poll < b.poll)

/** `polls` and `poll` (the first of them, absent when none) from a list of open polls. */
function withPolls(state: Omit<StreamState, 'poll' | 'polls'>, polls: PollView[]): StreamState {
  const { poll: _, polls: __, ...rest } = state as StreamState
  return { ...rest, ...(polls[0] ? { poll: polls[0] } : {}), polls }
}

const isOpen = (p: PollView, now: number) => p.status === 'open' && (p.closesAt === undefined || Date.parse(p.closesAt) > now)

/**
 * Live streams: `state` changes replace the stream's fields; `poll` changes open or close one of its
 * polls. The open polls are listed until they close, by event or by their `closesAt`. They carry no
 * tallies (the channel announces a poll opening and closing, not its votes): follow `poll:<id>` for
 * them. So two clients at the same version hold the same state, whenever they subscribed.
 */
export const stream: StateHelper<StreamState, ChannelUpdates['stream']> = {
  apply(state, u) {
    switch (u.kind) {
      case 'state':
        return withPolls(u.state, state.polls)
      case 'poll': {
        const polls = state.polls.filter((p) => p.poll !== u.poll.poll)
        if (u.poll.status === 'open') {
          const at = polls.findIndex((p) => before(u.poll, p))
          polls.splice(at < 0 ? polls.length : at, 0, u.poll)
        }
        return withPolls(state, polls)
      }
      default: {
        const never: never = u
        throw new Error(`unknown stream change ${JSON.stringify(never)}`)
      }
    }
  },
  at(state, now) {
    const open = state.polls.filter((p) => isOpen(p, now))
    return open.length === state.polls.length ? state : withPolls(state, open)
  },
  changesAt(state) {
    const ends = state.polls.flatMap((p) => (p.closesAt === undefined ? [] : [Date.parse(p.closesAt)]))
    return ends.length ? Math.min(...ends) : undefined
  },
}
