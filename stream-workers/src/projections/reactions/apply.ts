import { sql, type SQL } from 'drizzle-orm'
import { channelOf } from '../../../../core/channels'
import { rowsOf, type Db } from '../../../../core/db/client'
import { lookupByKey, recordset } from '../../../../core/db/recordset'
import { reactionTotals } from '../../../../core/db/schema'
import type { Applied, Change, Projection, SequencedEvent } from '../types'
import { emptyTally, evolveTally, type StreamTally } from './projection'

// Neither a stream name nor an emoji holds a NUL.
const keyOf = (stream: string, emoji: string) => `${stream}\u0000${emoji}`

/**
 * Applies a batch of `reaction.*` events: reads the totals of every (stream, emoji) the batch
 * touches in one query, tallies the batch per stream in event order, and returns ONE change per
 * stream (`{ counts, totals }`, see StreamTally) with the one upsert that writes the new totals
 * (absolute values: the batch's guard makes sure nobody wrote them since the read). A batch of 500
 * reactions on one stream is one row per emoji and one change, not 500.
 */
export async function applyReactions(db: Db, events: SequencedEvent[]): Promise<Applied> {
  const reactions: { stream: string; emoji: string }[] = []
  for (const { event } of events) {
    switch (event.type) {
      case 'reaction.sent':
        reactions.push({ stream: event.data.stream, emoji: event.data.emoji })
        break
      default:
        // The batch dead-letters events of other areas before they get here.
        throw new Error(`reactions projection got ${event.type}`)
    }
  }
  if (reactions.length === 0) return { changes: [] }

  const keys = new Map(reactions.map((r) => [keyOf(r.stream, r.emoji), r]))
  const rows = await rowsOf<{ stream: string; emoji: string; count: string | number }>(db, lookupByKey(reactionTotals, ['stream', 'emoji'], [...keys.values()]))
  const before = new Map(rows.map((r) => [keyOf(r.stream, r.emoji), Number(r.count)]))

  const tallies = new Map<string, StreamTally>()
  for (const { stream, emoji } of reactions) {
    tallies.set(stream, evolveTally(tallies.get(stream) ?? emptyTally(), emoji, before.get(keyOf(stream, emoji)) ?? 0))
  }

  const changes: Change[] = []
  const written: { stream: string; emoji: string; count: number }[] = []
  for (const [stream, tally] of tallies) {
    changes.push({ channel: channelOf.reactions(stream), data: tally })
    for (const [emoji, count] of Object.entries(tally.totals)) written.push({ stream, emoji, count })
  }
  const write = (when: SQL) =>
    db
      .insert(reactionTotals)
      .select(sql`select stream, emoji, count from ${recordset('r', { stream: 'text', emoji: 'text', count: 'bigint' }, written)} where ${when}`)
      .onConflictDoUpdate({ target: [reactionTotals.stream, reactionTotals.emoji], set: { count: sql`excluded.count` } })
  return { changes, write }
}

/** The reactions read model: `reaction.*` events into reaction_totals. */
export const reactionsProjection: Projection = { name: 'reactions', area: 'reaction', apply: applyReactions }
