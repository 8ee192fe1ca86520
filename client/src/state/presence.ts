import type { ChannelSnapshots, ChannelUpdates } from '../protocol'
import type { StateHelper } from './helper'

export type PresenceState = ChannelSnapshots['presence']

/**
 * Presence: counts, and the members of channels small enough to list them (sorted by user id, as
 * the server sorts them). A channel crossing the member limit comes as a fresh snapshot.
 */
export const presence: StateHelper<PresenceState, ChannelUpdates['presence']> = {
  apply(state, u, now) {
    const next: PresenceState = { ...state, connections: u.connections, users: u.users, asOf: new Date(now).toISOString() }
    if (u.kind === 'count' || state.members === undefined) return next
    const members = state.members.filter((m) => m.user !== u.user)
    // A join, or a present user's new display name (`update`): the member is (re)placed in order.
    if (u.kind === 'join' || u.kind === 'update') {
      const at = members.findIndex((m) => u.user < m.user)
      members.splice(at < 0 ? members.length : at, 0, { user: u.user, ...(u.name !== undefined ? { name: u.name } : {}) })
    }
    return { ...next, members }
  },
}
