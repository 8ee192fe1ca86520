import { eq } from 'drizzle-orm'
import { channelOf } from '../../../../core/channels'
import type { Db } from '../../../../core/db/client'
import { reactionTotals } from '../../../../core/db/schema'
import { readChannelSnapshot, type ChannelSnapshot } from '../channel-snapshot'
import type { ReactionTotals } from './model'

/** A stream's reaction totals per emoji (an unknown stream has none). */
export async function streamReactions(db: Db, stream: string): Promise<ReactionTotals> {
  const rows = await db.select({ emoji: reactionTotals.emoji, count: reactionTotals.count }).from(reactionTotals).where(eq(reactionTotals.stream, stream))
  return { stream, totals: Object.fromEntries(rows.map((r) => [r.emoji, Number(r.count)])) }
}

/** The channel `reactions:<stream>`: the totals with their version and epoch (see readChannelSnapshot). */
export function reactionsSnapshot(db: Db, stream: string): Promise<ChannelSnapshot<ReactionTotals>> {
  return readChannelSnapshot(db, channelOf.reactions(stream), (q) => streamReactions(q, stream))
}
