import type { ChannelSnapshots, ChannelUpdates, Kind } from '../protocol'
import type { StateHelper } from './helper'
import { leaderboard } from './leaderboard'
import { match } from './match'
import { poll } from './poll'
import { presence } from './presence'
import { reactions } from './reactions'
import { room } from './room'
import { stream } from './stream'
import { user } from './user'

export { RESYNC, type StateHelper } from './helper'

/** The state helper of every kind of channel. */
export const helpers: { [K in Kind]: StateHelper<ChannelSnapshots[K], ChannelUpdates[K]> } = {
  leaderboard,
  chat: room,
  user,
  stream,
  poll,
  reactions,
  match,
  presence,
}

/** The kind of a channel name (`presence:chat:lobby` is `presence`); undefined for an unknown one. */
export function kindOf(channel: string): Kind | undefined {
  const kind = channel.slice(0, channel.indexOf(':'))
  return Object.hasOwn(helpers, kind) ? (kind as Kind) : undefined
}
