import { sql, type SQL } from 'drizzle-orm'
import { channelOf } from '../../../../core/channels'
import { rowsOf, type Db } from '../../../../core/db/client'
import { lookupByKey, recordset } from '../../../../core/db/recordset'
import { reactionDedup, reactionTotals } from '../../../../core/db/schema'
import type { Applied, Change, Projection, SequencedEvent } from '../types'
import { emptyTally, evolveTally, isResend, type Reaction, type StreamTally } from './projection'
import { projectionAreas } from '../../../../core/projections'

// Neither a stream name, a principal id nor an emoji holds a NUL.
const totalKey = (stream: string, emoji: string) => `${stream}\u0000${emoji}`
const reactionKey = (r: { stream: string; by: string; id: string }) => `${r.stream}\u0000${r.by}\u0000${r.id}`

/** The reactions of a batch's events, in stream order (a batch message's in its order). */
function reactionsOf(events: SequencedEvent[]): Reaction[] {
  const out: Reaction[] = []
  for (const { event, storedAt } of events) {
    const at = storedAt.getTime()
    switch (event.type) {
      case 'reaction.sent':
        out.push({ stream: event.data.stream, emoji: event.data.emoji, by: event.by, id: event.id, storedAt: at })
        break
      case 'reaction.batched':
        for (const r of event.data.reactions) out.push({ stream: event.data.stream, emoji: r.emoji, by: r.by, id: r.id, storedAt: at, dedupWindowMs: event.data.dedupWindowMs })
        break
      default:
        // The batch dead-letters events of other areas before they get here.
        throw new Error(`reactions projection got ${event.type}`)
    }
  }
  return out
}

/**
 * Applies a batch of `reaction.*` events: reads, in one round trip, the totals of every (stream,
 * emoji) the batch touches and when each of its reactions' (stream, by, id) was last counted;
 * drops resends (see isResend); tallies the rest per stream in stream order; and returns ONE change
 * per stream (`{ counts, totals }`, see StreamTally) with the statements that write the new totals
 * (absolute values: the batch's guard makes sure nobody wrote them since the read), record the
 * counted reactions, and forget the ones no later reaction can repeat. A batch of 500 reactions on
 * one stream is one totals row per emoji and one change, not 500.
 */
export async function applyReactions(db: Db, events: SequencedEvent[]): Promise<Applied> {
  const reactions = reactionsOf(events)
  if (reactions.length === 0) return { changes: [] }

  const totalKeys = new Map(reactions.map((r) => [totalKey(r.stream, r.emoji), { stream: r.stream, emoji: r.emoji }]))
  const reactionKeys = new Map(reactions.map((r) => [reactionKey(r), { stream: r.stream, by: r.by, id: r.id }]))
  const [totalRows, countedRows] = await Promise.all([
    rowsOf<{ stream: string; emoji: string; count: string | number }>(db, lookupByKey(reactionTotals, ['stream', 'emoji'], [...totalKeys.values()])),
    rowsOf<{ stream: string; by: string; id: string; stored_at: string | Date }>(db, lookupByKey(reactionDedup, ['stream', 'by', 'id'], [...reactionKeys.values()])),
  ])
  const before = new Map(totalRows.map((r) => [totalKey(r.stream, r.emoji), Number(r.count)]))
  const countedAt = new Map(countedRows.map((r) => [reactionKey(r), new Date(r.stored_at).getTime()]))

  const tallies = new Map<string, StreamTally>()
  const counted = new Map<string, Reaction>()
  // Per stream, the earliest (stored time - window) of the batch's reactions: a row of the stream
  // counted before it can never make this batch's or a later reaction a resend.
  const horizon = new Map<string, number>()
  for (const r of reactions) {
    const key = reactionKey(r)
    if (r.dedupWindowMs !== undefined) horizon.set(r.stream, Math.min(horizon.get(r.stream) ?? Number.POSITIVE_INFINITY, r.storedAt - r.dedupWindowMs))
    if (isResend(r, countedAt.get(key))) continue
    countedAt.set(key, r.storedAt)
    counted.set(key, r)
    tallies.set(r.stream, evolveTally(tallies.get(r.stream) ?? emptyTally(), r.emoji, before.get(totalKey(r.stream, r.emoji)) ?? 0))
  }

  const changes: Change[] = []
  const totals: { stream: string; emoji: string; count: number }[] = []
  for (const [stream, tally] of tallies) {
    changes.push({ channel: channelOf.reactions(stream), data: tally })
    for (const [emoji, count] of Object.entries(tally.totals)) totals.push({ stream, emoji, count })
  }
  const recorded = [...counted.values()].map((r) => ({ stream: r.stream, by: r.by, id: r.id, stored_at: new Date(r.storedAt).toISOString() }))
  const forget = [...horizon].map(([stream, before]) => ({ stream, before: new Date(before).toISOString() }))
  // Reactions counted again past their window: their old rows are the only ones the batch both
  // forgets and records, and one statement must not change a row twice. Rare (a resend that late).
  const recounted = countedRows.filter((row) => counted.has(reactionKey(row)))
  if (recorded.length === 0 && forget.length === 0) return { changes }
  const write = (when: SQL) => {
    const out = []
    if (totals.length > 0) {
      out.push(
        db
          .insert(reactionTotals)
          .select(sql`select stream, emoji, count from ${recordset('r', { stream: 'text', emoji: 'text', count: 'bigint' }, totals)} where ${when}`)
          .onConflictDoUpdate({ target: [reactionTotals.stream, reactionTotals.emoji], set: { count: sql`excluded.count` } }),
      )
    }
    if (recorded.length > 0) {
      out.push(
        db
          .insert(reactionDedup)
          .select(sql`select stream, "by", id, stored_at from ${recordset('c', { stream: 'text', by: 'text', id: 'text', stored_at: 'timestamptz' }, recorded)} where ${when}`)
          .onConflictDoUpdate({ target: [reactionDedup.stream, reactionDedup.by, reactionDedup.id], set: { storedAt: sql`excluded.stored_at` } }),
      )
    }
    if (forget.length > 0) {
      // One range of the (stream, stored_at) index per stream (a batch touches a few streams): a
      // join with a recordset could be planned as a scan of the whole table (see lookupByKey).
      const ranges = sql.join(
        forget.map((f) => sql`(d.stream = ${f.stream} and d.stored_at < ${f.before}::timestamptz)`),
        sql` or `,
      )
      const keep = recounted.length
        ? sql` and (d.stream, d."by", d.id) not in (${sql.join(
            recounted.map((k) => sql`(${k.stream}, ${k.by}, ${k.id})`),
            sql`, `,
          )})`
        : sql``
      out.push(sql`delete from ${reactionDedup} d where (${ranges})${keep} and ${when}`)
    }
    return out
  }
  return { changes, write }
}

/** The reactions read model: `reaction.*` events into reaction_totals (and reaction_dedup). */
export const reactionsProjection: Projection = { name: 'reactions', area: projectionAreas.reactions, apply: applyReactions }
