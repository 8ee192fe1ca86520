import type { ChangeNotice } from '../../../core/channels'
import type { SQL, SQLWrapper } from 'drizzle-orm'
import type { Db } from '../../../core/db/client'
import type { StoredEvent } from '../../../core/events'
import type { ProjectionName, UNCLAIMED } from '../../../core/projections'

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
export type Change = { channel: string; data: ChangeNotice['data'] }

/** What a projection made of a batch: its changes, and the statement that writes them. */
export type Applied = {
  /** In event order: one per event that changed something, none for the others. */
  changes: Change[]
  /**
   * The read-model write, not run: the batch runs it as part of its one statement (with the
   * checkpoint, versions and outbox), and only `when` that statement's checkpoint guard holds, so
   * the projection must put `when` in its write's WHERE. An INSERT, UPDATE or DELETE without a
   * RETURNING clause (the batch adds one to order its statement), or several for a model of more
   * than one table (each its own member of the statement: Postgres allows data-modifying WITH
   * members only at the top level). They all see the statement's one snapshot, so no two may write
   * the same row. Absent when nothing changed.
   */
  write?: (when: SQL) => SQLWrapper | SQLWrapper[]
  /**
   * For reads of rows that others than this partition's owner write (a board's rules: the admin
   * API): a statement that the batch runs first, which locks those rows, checks that they still are
   * as read and returns one row for each that is. The batch writes only if it returns `rows` rows;
   * otherwise nothing is written and applyBatch throws StaleReadError (the runner applies the batch
   * again from fresh reads).
   */
  recheck?: { statement: SQLWrapper; rows: number }
  /**
   * Events of the batch that can never apply, by stream sequence, with why (a chat message whose
   * id another publisher already uses in its room). The batch writes them as dead letters in its
   * statement; they change nothing else.
   */
  refused?: { seq: number; reason: string }[]
  /**
   * Events the batch derives for other projections (a finished match's scores): written to the
   * event outbox in the batch's statement and published after it commits, each with a
   * deterministic id (its Nats-Msg-Id is `<by>/<id>`), so they exist exactly when the batch does.
   */
  events?: StoredEvent[]
}

/**
 * A read model fed from one area of events (`score`, `chat`). `apply` reads what the events need
 * through `db` (no transaction: see applyBatch for why that is safe, and Applied.recheck), evolves it in event order,
 * and returns the changes with the write that stores them (see Applied). It must not write.
 */
export type Projection = {
  name: ProjectionName
  /** The event-type prefix this projection consumes: `score` for `score.*`. */
  area: string
  apply: (db: Db, events: SequencedEvent[]) => Promise<Applied>
}

/**
 * The catch of the messages no projection consumes (see stream-workers/src/runtime/unclaimed.ts):
 * it writes a dead letter of each message whose subject no projection's consumer takes (see
 * claimOf); it applies nothing.
 */
export type UnclaimedCatch = { name: typeof UNCLAIMED }

/** Who applies a batch: a projection, or (on partition 0) the catch of unclaimed messages. */
export type Applier = Projection | UnclaimedCatch
