import type { ChatChange, LeaderboardChange } from '../../../core/channels'
import type { Tx } from '../../../core/db/client'
import type { StoredEvent } from '../../../core/events'
import type { ProjectionName } from '../../../core/projections'

export type { ProjectionName } from '../../../core/projections'

/** A decoded, valid event with its place in the stream. */
export type SequencedEvent<E extends StoredEvent = StoredEvent> = {
  event: E
  /** Stream sequence: the event's position in the event stream. */
  seq: number
  /** When JetStream stored it; the fallback for an event without `at`. */
  storedAt: Date
}

/** One change a projection made to one channel, before it gets its version. */
export type Change = { channel: string; data: LeaderboardChange | ChatChange }

/** What a projection made of a batch: its changes, and the statement that writes them. */
export type Applied = {
  /** In event order: one per event that changed something, none for the others. */
  changes: Change[]
  /**
   * Writes the read model. The batch runs it together with its own writes (versions, outbox,
   * checkpoint), all sent at once on the transaction's connection, so a batch costs one round of
   * reads and one round of writes. Absent when nothing changed.
   */
  write?: () => Promise<unknown>
}

/**
 * A read model fed from one area of events (`score`, `chat`). `apply` runs inside the batch's
 * transaction and must use only `tx`: it reads what the events need, evolves it in event order,
 * and returns the changes with the write that stores them (see Applied).
 */
export type Projection = {
  name: ProjectionName
  /** The event-type prefix this projection consumes: `score` for `score.*`. */
  area: string
  apply: (tx: Tx, events: SequencedEvent[]) => Promise<Applied>
}

/** Splits rows into chunks that stay under Postgres' 65,535 bind parameters per statement. */
export function chunkForInsert<T>(rows: T[], columns: number, maxParams = 60_000): T[][] {
  const size = Math.max(1, Math.floor(maxParams / columns))
  const out: T[][] = []
  for (let i = 0; i < rows.length; i += size) out.push(rows.slice(i, i + size))
  return out
}
