import type { JsMsg } from '@nats-io/jetstream'
import { millis } from '@nats-io/transport-node'
import { and, eq, sql, type SQL } from 'drizzle-orm'
import { rowsOf, type Db } from '../../../core/db/client'
import { projectionCheckpoints } from '../../../core/db/schema'
import { decodeEvent, keyOf, partitionOf } from '../../../core/events'
import { SpanKind, SpanStatusCode } from '@opentelemetry/api'
import { tracer } from '../../../core/tracing'
import type { Applied, Projection, SequencedEvent } from '../projections/types'
import { deadLetterWrite, guessEventId, replayOutcomeWrite, type DeadLetter } from './dead-letters'
import { CheckpointMovedError, FencedError, StaleReadError, StreamChangedError } from './errors'
import { eventOutboxWrite, insertedEvents, insertedRuns, outboxWrite, parseInsertedRuns, type OutboxEvent, type OutboxRun } from './outbox'

/** What the batch needs of a stream message. */
export type BatchMessage = { subject: string; seq: number; body: Uint8Array; storedAt: Date }

/** A delivered JetStream message as the batch needs it. */
export const batchMessageOf = (m: JsMsg): BatchMessage => ({ subject: m.subject, seq: m.seq, body: m.data, storedAt: new Date(millis(m.info.timestampNanos)) })

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
  /** Derived events committed with the batch (see Applied.events), to publish after commit. */
  events: OutboxEvent[]
  /** The checkpoint after the batch: what the next batch expects. */
  checkpoint: number
  /** A replay (see ApplyOptions) that failed again: why; the dead letter now holds this reason. */
  stillFailing?: string
}

export type ApplyOptions = {
  /**
   * Re-runs one dead letter (the batch is its one message) instead of new messages: applied
   * whatever the checkpoint (which stays where it is), under the same guard as a batch, and the
   * statement deletes the dead letter if it applies now, or stores its new reason if it does not.
   * The caller holds the dead letter's row lock in the transaction `db` belongs to (see replay.ts).
   */
  replay?: { deadLetter: number }
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
 * Applies a batch of messages, in the order given, exactly once: reads what the projection needs,
 * then writes everything (read model, dead letters, channel versions and outbox, checkpoint) in
 * ONE statement, which commits on its own (or with the caller's transaction: the rebuild).
 *
 * `expected` is the checkpoint the owner last saw (read when it opened its consumer, then what its
 * own batches wrote): messages at or below it are redeliveries and are skipped. The statement
 * writes only if the checkpoint still is `expected`, fenced by no newer lease than `owner.token`,
 * and counts in `owner.stream`; otherwise it writes nothing and this throws FencedError,
 * StreamChangedError or CheckpointMovedError (the caller re-reads the checkpoint). It also writes
 * nothing if the projection's recheck (see Applied) finds rows it read changed: StaleReadError.
 *
 * Why the reads need no lock: a key's events only ever apply in its partition, so the rows they
 * read are written only by an owner of this partition, and every such write moves the checkpoint.
 * If another owner wrote after our reads, the checkpoint is no longer `expected` and nothing is
 * written. Rows that others write too (a board's rules) are rechecked under a lock by the
 * statement itself (Applied.recheck). Why one statement: the channel version rows are shared by
 * every partition (one board spans them); locked by a statement that commits by itself, they are
 * held for that statement alone, not through client round trips to a COMMIT (and within it they
 * are locked last, see below).
 */
export async function applyBatch(db: Db, owner: BatchOwner, expected: number, messages: BatchMessage[], now: Date, opts: ApplyOptions = {}): Promise<BatchResult> {
  // This async function only awaits; the per-message loops and the statement's text are built in
  // the plain functions below. JSC compiles an async function whole (its state machine and every
  // loop in it): with the loops here, it reached JSC's top tier late in a run (after ~100k events)
  // and that one compile took ~0.8 s of a compiler thread, in every worker process.
  const fresh = opts.replay ? messages : messages.filter((m) => m.seq > expected)
  const skipped = messages.length - fresh.length
  if (fresh.length === 0) return { applied: 0, skipped, deadLettered: 0, runs: [], events: [], checkpoint: expected }
  const { events, letters } = checkMessages(owner, fresh)
  // A replay that fails again writes nothing but its new reason (under the guard, like the rest).
  const applied: Applied = opts.replay && letters.length > 0 ? { changes: [] } : await owner.projection.apply(db, events)
  const { refused = [] } = applied
  if (refused.length > 0) letters.push(...refusedLetters(owner, fresh, events, refused))
  const stillFailing = opts.replay && letters.length > 0 ? letters.map((l) => l.reason).join('; ') : undefined
  const checkpoint = opts.replay ? expected : lastSeq(fresh, expected)
  const statement = batchStatement(owner, expected, checkpoint, fresh, letters, stillFailing === undefined ? applied : { changes: [] }, now, opts)
  const [row] = await tracer.startActiveSpan(
    'postgres batch statement',
    { kind: SpanKind.CLIENT, attributes: { 'db.system.name': 'postgresql', 'db.operation.name': 'WITH', 'fanfare.projection': owner.projection.name, 'fanfare.events': events.length } },
    (span) =>
      rowsOf<{ ok: number; rechecked: boolean; runs: string; events: string }>(db, statement)
        .catch((err) => {
          span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error)?.message })
          throw err
        })
        .finally(() => span.end()),
  )
  if (Number(row.ok) !== 1) throw await whyNotWritten(db, owner, expected, row.rechecked)
  if (stillFailing !== undefined) return { applied: 0, skipped, deadLettered: 0, runs: [], events: [], checkpoint, stillFailing }
  return { applied: events.length - refused.length, skipped, deadLettered: letters.length, runs: parseInsertedRuns(row.runs), events: JSON.parse(row.events) as OutboxEvent[], checkpoint }
}

/** The batch's messages as events to apply, and dead letters for those that do not belong (see checkMessage). */
function checkMessages(owner: BatchOwner, fresh: BatchMessage[]): { events: SequencedEvent[]; letters: DeadLetter[] } {
  const events: SequencedEvent[] = []
  const letters: DeadLetter[] = []
  for (const m of fresh) {
    const problem = checkMessage(owner, m)
    if ('reason' in problem) {
      const payload = new TextDecoder().decode(m.body)
      letters.push({ projection: owner.projection.name, partition: owner.partition, streamSeq: m.seq, subject: m.subject, eventId: problem.eventId ?? guessEventId(payload), reason: problem.reason, payload })
    } else {
      events.push(problem)
    }
  }
  return { events, letters }
}

/** Dead letters for the events the projection refused (see Applied.refused). */
function refusedLetters(owner: BatchOwner, fresh: BatchMessage[], events: SequencedEvent[], refused: NonNullable<Applied['refused']>): DeadLetter[] {
  const { projection, partition } = owner
  return refused.map((r) => {
    const m = fresh.find((f) => f.seq === r.seq)
    const event = events.find((e) => e.seq === r.seq)
    if (!m || !event) throw new Error(`projection ${projection.name} refused seq ${r.seq}, which is not in the batch`)
    return { projection: projection.name, partition, streamSeq: m.seq, subject: m.subject, eventId: event.event.id, reason: r.reason, payload: new TextDecoder().decode(m.body) }
  })
}

const lastSeq = (fresh: BatchMessage[], expected: number): number => fresh.reduce((max, m) => Math.max(max, m.seq), expected)

/**
 * The batch's one statement: the checkpoint guard, the projection's writes, the dead letters and
 * the outbox, each written only if the guard moved the checkpoint (see applyBatch).
 */
function batchStatement(owner: BatchOwner, expected: number, checkpoint: number, fresh: BatchMessage[], letters: DeadLetter[], applied: Applied, now: Date, opts: ApplyOptions): SQL {
  const { projection, partition, token } = owner
  const { changes, write, recheck, events: derived = [] } = applied
  // `guard` moves the checkpoint (or creates it, for a shadow's first batch) only from `expected`,
  // and only if the projection's recheck found its reads unchanged; every other write of the
  // statement happens only if it did.
  const when = sql`exists (select 1 from guard)`
  const members: SQL[] = []
  if (recheck) members.push(sql`recheck as (${recheck.statement.getSQL()})`)
  members.push(
    sql`guard as (
      insert into ${projectionCheckpoints} (projection, partition, seq, fence, stream, updated_at)
      select ${projection.name}, ${partition}, ${checkpoint}, ${token}, ${owner.stream}, ${now.toISOString()}::timestamptz
      where ${recheck ? sql`(select count(*) from recheck) = ${recheck.rows}` : sql`true`}
      on conflict (projection, partition) do update set seq = excluded.seq, fence = excluded.fence, updated_at = excluded.updated_at
      where ${projectionCheckpoints}.seq = ${expected} and ${projectionCheckpoints}.fence <= ${token} and ${projectionCheckpoints}.stream = ${owner.stream}
      returning 1
    )`,
  )
  // `returning 1` lets the select below run the model writes before the outbox (see there).
  const writes = write ? [write(when)].flat() : []
  writes.forEach((w, i) => members.push(sql`${sql.raw(`model_${i}`)} as (${w.getSQL()} returning 1)`))
  const stillFailing = opts.replay && letters.length > 0 ? letters.map((l) => l.reason).join('; ') : undefined
  if (opts.replay) members.push(sql`letters as (${replayOutcomeWrite(opts.replay.deadLetter, stillFailing, when)})`)
  else if (letters.length > 0) members.push(sql`letters as (${deadLetterWrite(letters, when)})`)
  const eventsOut = eventOutboxWrite(derived, now, when)
  if (eventsOut) members.push(eventsOut)
  // The oldest event's stored time: each run carries it for fanfare_event_to_push_seconds.
  const storedAt = fresh.reduce((min, m) => (m.storedAt < min ? m.storedAt : min), fresh[0].storedAt)
  const outbox = outboxWrite(changes, now, when, storedAt)
  if (outbox) members.push(outbox)
  // The select list runs the members in this order: guard (and its recheck), the read-model writes,
  // then the outbox, whose version upsert locks the channel version rows that every partition
  // shares until the statement commits. Last, so that they are held for the version upsert and the
  // commit only, not for the read-model write too (hundreds of rows in a full batch): with the
  // model written after them, every partition's batches queued behind each other's writes
  // (2 worker processes: 14k -> 27k events/s in the projection benchmark).
  return sql`with ${sql.join(members, sql`, `)}
        select (select count(*) from guard)::int as ok,
          ${recheck ? sql`(select count(*) = ${recheck.rows} from recheck)` : sql`true`} as rechecked,
          ${writes.length > 0 ? sql.join(writes.map((_, i) => sql.raw(`(select count(*) from model_${i})`)), sql` + `) : sql`0`} as written,
          ${outbox ? insertedRuns : sql`'[]'`} as runs,
          ${eventsOut ? insertedEvents : sql`'[]'`} as events`
}

/** After a guard refused a batch: the error that says why. */
async function whyNotWritten(db: Db, owner: BatchOwner, expected: number, rechecked: boolean): Promise<Error> {
  if (!rechecked) return new StaleReadError(owner.projection.name)
  const [cp] = await db
    .select({ seq: projectionCheckpoints.seq, fence: projectionCheckpoints.fence, stream: projectionCheckpoints.stream })
    .from(projectionCheckpoints)
    .where(and(eq(projectionCheckpoints.projection, owner.projection.name), eq(projectionCheckpoints.partition, owner.partition)))
  if (cp && Number(cp.fence) > owner.token) return new FencedError(Number(cp.fence), owner.token)
  if (cp && cp.stream !== owner.stream) return new StreamChangedError(cp.stream, owner.stream)
  return new CheckpointMovedError(expected, cp ? Number(cp.seq) : undefined)
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
