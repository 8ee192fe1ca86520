import { parseChannel } from '../../../core/channels'
import type { Db } from '../../../core/db/client'
import { leaderboardSnapshot } from '../modules/leaderboards/service'
import { roomSnapshot } from '../modules/rooms/service'
import { pollSnapshot } from '../modules/polls/service'
import { streamSnapshot } from '../modules/streams/service'
import { reactionsSnapshot } from '../modules/reactions/service'
import { matchSnapshot } from '../modules/matches/service'
import { readChannelSnapshot } from '../modules/channel-snapshot'
import type { Snapshot } from './channel-hub'

/** Reads any channel's snapshot from its read model (version and data in one transaction). */
export function snapshotReader(db: Db): (channel: string) => Promise<Snapshot> {
  return async (channel) => {
    const parsed = parseChannel(channel)
    if (!parsed) throw new Error(`not a channel: ${channel}`)
    switch (parsed.kind) {
      case 'leaderboard':
        return leaderboardSnapshot(db, parsed.name)
      case 'chat':
        return roomSnapshot(db, parsed.name)
      case 'stream':
        return streamSnapshot(db, parsed.name)
      case 'poll':
        return pollSnapshot(db, parsed.name)
      case 'reactions':
        return reactionsSnapshot(db, parsed.name)
      case 'match':
        return matchSnapshot(db, parsed.name)
      case 'user':
        // A user's private channel: notices for that user (the decisions on their match joins).
        return readChannelSnapshot(db, channel, async () => ({ user: parsed.name }))
      default: {
        const unreachable: never = parsed.kind
        throw new Error(`unknown channel kind ${unreachable}`)
      }
    }
  }
}
