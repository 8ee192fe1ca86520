import { and, eq, sql } from 'drizzle-orm'
import type { Db, Tx } from '../../../core/db/client'
import { projectionCheckpoints } from '../../../core/db/schema'
import { decodeEvent, keyOf, partitionOf } from '../../../core/events'
import type { Projection, SequencedEvent } from '../projections/types'
import { guessEventId, recordDeadLetters, type DeadLetter } from './dead-letters'
import { FencedError, StreamChangedError } from './errors'
import { recordChanges, type OutboxRun } from './outbox'

/** What the batch needs of a stream message. */
export type BatchMessage = { subject: string; seq: number; body: Uint8Array; storedAt: Date }

/** Who applies the batch: one projection of one partition, under one lease token. */
export type BatchOwner = {
  projection: Projection
  partition: number
  /** Fencing token of the current ownership (see claimFence). */
  token: number
  /** Partition count of the deployment, to check that an event's key belongs here. */
  partitions: number
  /** Identity of the event stream the messages come from (see streamIdentity). */
  stream: string
}

export type BatchResult = {
  applied: number
  /** Already applied by an earlier delivery (seq <= checkpoint). */
  skipped: number
  deadLettered: number
  /** Change runs committed with the batch, in version order per channel, to publish after commit. */
  runs: OutboxRun[]
}

/**
 * Applies a batch of messages, in the order given, in one transaction together with the
 * checkpoint. Locks the checkpoint row first: two owners of one partition serialise on it, a
 * message at or below the checkpoint is a redelivery and is skipped, and a checkpoint fenced by a
 * newer lease than `owner.token` throws FencedError, and one of another event stream than
 * `owner.stream` StreamChangedError (nothing is written). Messages that can never apply become dead
 * letters in the same transaction.
 */
export function applyBatch(db: Db, owner: BatchOwner, messages: BatchMessage[], now: Date): Promise<BatchResult> {
  return db.transaction((tx) => applyBatchIn(tx, owner, messages, now))
}

/**
 * Claims a new fencing token for one projection of one partition: the checkpoint row's fence plus
 * one, in Postgres. Every ownership claims one when it starts, so a newer owner always holds a
 * larger token than any older one and the older is fenced at its next batch, whatever happened to
 * the lease bucket in NATS (its revisions restart at 1 if it is recreated).
 */
export async function claimFence(db: Db, projection: string, partition: number): Promise<number> {
  const [row] = await db
    .insert(projectionCheckpoints)
    .values({ projection, partition, seq: 0, fence: 1 })
    .onConflictDoUpdate({
      target: [projectionCheckpoints.projection, projectionCheckpoints.partition],
      set: { fence: sql`${projectionCheckpoints.fence} + 1` },
    })
    .returning({ fence: projectionCheckpoints.fence })
  return Number(row.fence)
}

/**
 * applyBatch inside the caller's transaction (the rebuild applies into a shadow schema selected
 * by the transaction's search_path). Same contract as applyBatch; the caller commits.
 */
export async function applyBatchIn(tx: Tx, owner: BatchOwner, messages: BatchMessage[], now: Date): Promise<BatchResult> {
  const { projection, partition, token } = owner
  // Insert-or-touch returns the row locked like SELECT ... FOR UPDATE, in one round trip.
  const [checkpoint] = await tx
    .insert(projectionCheckpoints)
    .values({ projection: projection.name, partition, seq: 0, fence: 0, stream: owner.stream })
    .onConflictDoUpdate({
      target: [projectionCheckpoints.projection, projectionCheckpoints.partition],
      set: { projection: sql`excluded.projection` },
    })
    .returning({ seq: projectionCheckpoints.seq, fence: projectionCheckpoints.fence, stream: projectionCheckpoints.stream })
  const fence = Number(checkpoint.fence)
  if (fence > token) throw new FencedError(fence, token)
  // Sequences of another stream than the checkpoint's are not comparable with it.
  if (checkpoint.stream !== owner.stream) throw new StreamChangedError(checkpoint.stream, owner.stream)
  const applied = Number(checkpoint.seq)

  const fresh = messages.filter((m) => m.seq > applied)
  const events: SequencedEvent[] = []
  const letters: DeadLetter[] = []
  for (const m of fresh) {
    const problem = checkMessage(owner, m)
    if ('reason' in problem) {
      const payload = new TextDecoder().decode(m.body)
      letters.push({ projection: projection.name, partition, streamSeq: m.seq, subject: m.subject, eventId: problem.eventId ?? guessEventId(payload), reason: problem.reason, payload })
    } else {
      events.push(problem)
    }
  }
  const { changes, write } = await projection.apply(tx, events)
  // Every write of the batch at once: they touch different rows, and sent together they cost one
  // round trip (the driver pipelines them on the transaction's connection). The channel versions
  // go last: their rows are the ones other partitions wait for, locked from here to commit.
  const checkpointMoves = fresh.length > 0 || fence !== token
  const [, , , runs] = await Promise.all([
    write?.(),
    recordDeadLetters(tx, letters),
    checkpointMoves
      ? tx
          .update(projectionCheckpoints)
          .set({ seq: fresh.reduce((max, m) => Math.max(max, m.seq), applied), fence: token, updatedAt: now })
          .where(and(eq(projectionCheckpoints.projection, projection.name), eq(projectionCheckpoints.partition, partition)))
      : undefined,
    recordChanges(tx, changes, now),
  ])
  return { applied: events.length, skipped: messages.length - fresh.length, deadLettered: letters.length, runs }
}

/** Decodes a message and checks it belongs to this projection and partition. */
function checkMessage(owner: BatchOwner, m: BatchMessage): SequencedEvent | { reason: string; eventId?: string } {
  const decoded = decodeEvent(m.body)
  if (!decoded.ok) return { reason: decoded.reason }
  const event = decoded.event
  // `<prefix>.ev.<partition>.<type>`: the prefix has no dots (config pattern).
  const subjectType = m.subject.split('.').slice(3).join('.')
  if (subjectType !== event.type) {
    return { reason: `subject type ${JSON.stringify(subjectType)} does not match event type ${JSON.stringify(event.type)}`, eventId: event.id }
  }
  if (event.type.split('.')[0] !== owner.projection.area) {
    return { reason: `event type ${event.type} does not belong to projection ${owner.projection.name}`, eventId: event.id }
  }
  // An event in the wrong partition would escape the per-key ordering; refuse it loudly.
  const expected = partitionOf(keyOf(event), owner.partitions)
  if (expected !== owner.partition) {
    return { reason: `key ${JSON.stringify(keyOf(event))} belongs to partition ${expected}, not ${owner.partition}`, eventId: event.id }
  }
  return { event, seq: m.seq, storedAt: m.storedAt }
}
