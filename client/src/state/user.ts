import type { ChannelSnapshots, ChannelUpdates } from '../protocol'
import type { StateHelper } from './helper'

export type UserState = ChannelSnapshots['user']

/** A user's private channel: its updates are notices (see onUpdate); the state is who it is for. */
export const user: StateHelper<UserState, ChannelUpdates['user']> = {
  apply: (state) => state,
}
