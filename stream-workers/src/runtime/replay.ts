import { eq } from 'drizzle-orm'
import type { Db } from '../../../core/db/client'
import { deadLetters } from '../../../core/db/schema'
import type { ReplayReply } from '../../../core/dead-letters'
import { applyBatch, type BatchOwner } from './batch'
import type { OutboxEvent, OutboxRun } from './outbox'

/**
 * Re-runs dead letter `id` through its projection, exactly once: in one transaction that holds the
 * dead letter's row lock (a concurrent replay or discard waits, then finds it gone), applyBatch in
 * replay mode writes the read model, the channel changes and the deletion of the dead letter
 * together, or, if the message still cannot apply, only its new reason. The caller is the runner
 * that owns the partition, between its batches: `expected` is its checkpoint, which stays where it
 * is (the runner's next batch guard still holds); a stale owner is refused by the fence, like any
 * of its batches (FencedError).
 */
export async function replayDeadLetter(db: Db, owner: BatchOwner, expected: number, id: number, now: Date): Promise<{ reply: ReplayReply; runs: OutboxRun[]; events: OutboxEvent[] }> {
  return db.transaction(async (tx) => {
    const [row] = await tx.select().from(deadLetters).where(eq(deadLetters.id, id)).for('update')
    if (!row) return { reply: { outcome: 'not_found' }, runs: [], events: [] }
    if (row.projection !== owner.projection.name || row.partition !== owner.partition) {
      return { reply: { outcome: 'unavailable', message: `dead letter ${id} belongs to ${row.projection}/${row.partition}, not this runner` }, runs: [], events: [] }
    }
    const message = { subject: row.subject, seq: row.streamSeq, body: new TextEncoder().encode(row.payload), storedAt: row.createdAt }
    const result = await applyBatch(tx as unknown as Db, owner, expected, [message], now, { replay: { deadLetter: id } })
    if (result.stillFailing !== undefined) return { reply: { outcome: 'still_failing', reason: result.stillFailing }, runs: [], events: [] }
    return { reply: { outcome: 'replayed' }, runs: result.runs, events: result.events }
  })
}
