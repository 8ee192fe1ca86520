import type { JsMsg } from '@nats-io/jetstream'
import { and, eq, sql, type SQL } from 'drizzle-orm'
import { rowsOf, type Db } from '../../../core/db/client'
import { projectionCheckpoints } from '../../../core/db/schema'
import { decodeEvent, keyOf, partitionOf } from '../../../core/events'
import { context, SpanKind, SpanStatusCode, type Context, type Link } from '@opentelemetry/api'
import { tracer } from '../../../core/tracing'
import type { Applied, Applier, SequencedEvent } from '../projections/types'
import { deadLetterWrite, guessEventId, replayOutcomeWrite, type DeadLetter } from './dead-letters'
import { unclaimedReason } from './unclaimed'
import { UNCLAIMED } from '../../../core/projections'
import { CheckpointMovedError, errorMessageOf, FencedError, StaleReadError, StreamChangedError } from './errors'
import { recordset } from '../../../core/db/recordset'
import { eventOutboxWrite, insertedEvents, insertedEventsOf, insertedRuns, insertedRunsByPart, outboxWrite, outboxWriteOf, parseInsertedRuns, parseInsertedRunsByPart, runAt, type OutboxEvent, type OutboxRun } from './outbox'

/** What the batch needs of a stream message. */
export type BatchMessage = { subject: string; seq: number; body: Uint8Array; storedAt: Date }

/**
 * A delivered JetStream message as the batch needs it. Its stored time is read from the exact
 * nanoseconds (a bigint), floored to the millisecond: `info.timestampNanos` is a float rounded to
 * 256 ns, and a score stored in the last ~128 ns of a day read as the next day's first instant,
 * so it counted in the next day's (week's, month's) period.
 */
export const batchMessageOf = (m: Pick<JsMsg, 'subject' | 'seq' | 'data' | 'timestampNanos'>): BatchMessage => ({
  subject: m.subject,
  seq: m.seq,
  body: m.data,
  storedAt: new Date(Number(m.timestampNanos / 1_000_000n)),
})

/** Who applies the batch: one projection (or the catch of unclaimed messages) of one partition, under one lease token. */
export type BatchOwner = {
  projection: Applier
  partition: number
  /** Fencing token of the current ownership (see claimFence). */
  token: number
  /** Partition count of the deployment, to check that an event's key belongs here. */
  partitions: number
  /** Identity of the event stream the messages come from (see streamIdentity). */
  stream: string
  /** Live batches: the batch's runs also go to change_history (see outboxWriteOf). */
  history?: boolean
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
  /**
   * A message of the batch that Postgres refused (a data error, see isDataDbError): written as a
   * dead letter with `reason` instead of being applied, like a message that does not decode.
   */
  refusedByPostgres?: { seq: number; reason: string }
  /**
   * The batch span's context, parent of the statement's span (default: the active context). Given
   * explicitly so that a batch runs without entering an AsyncLocalStorage store (see tracedBatch).
   */
  trace?: Context
  /**
   * Nothing is written before this settles, and nothing at all if it rejects (this throws its
   * error): the live runner's check that its consumer skipped no stored event (see consumeFrom),
   * made beside the batch's reads instead of before them.
   */
  ready?: Promise<unknown>
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
  const prepared = await prepareBatch(db, owner, expected, messages, now, opts)
  await opts.ready
  return 'done' in prepared ? prepared.done : commitBatch(db, prepared)
}

/**
 * A batch read and evolved by its projection, its statement not yet run (see prepareBatch):
 * commitBatch runs it alone, commitGroup with other partitions' batches.
 */
export type PreparedBatch = {
  owner: BatchOwner
  expected: number
  /** The checkpoint the statement writes. */
  checkpoint: number
  fresh: BatchMessage[]
  skipped: number
  events: SequencedEvent[]
  letters: DeadLetter[]
  /** What the statement writes (no changes for a replay that fails again). */
  applied: Applied
  refused: number
  stillFailing?: string
  now: Date
  opts: ApplyOptions
}

/**
 * The first half of applyBatch: skips redeliveries, dead-letters what does not belong, and lets the
 * projection read and evolve the rest. `done` when nothing is left to write (every message a
 * redelivery).
 */
export async function prepareBatch(db: Db, owner: BatchOwner, expected: number, messages: BatchMessage[], now: Date, opts: ApplyOptions = {}): Promise<PreparedBatch | { done: BatchResult }> {
  // This async function only awaits; the per-message loops and the statement's text are built in
  // the plain functions below. JSC compiles an async function whole (its state machine and every
  // loop in it): with the loops here, it reached JSC's top tier late in a run (after ~100k events)
  // and that one compile took ~0.8 s of a compiler thread, in every worker process.
  const fresh = opts.replay ? messages : messages.filter((m) => m.seq > expected)
  const skipped = messages.length - fresh.length
  if (fresh.length === 0) return { done: { applied: 0, skipped, deadLettered: 0, runs: [], events: [], checkpoint: expected } }
  const { events, letters } = checkMessages(owner, fresh, opts.refusedByPostgres)
  // A replay that fails again writes nothing but its new reason (under the guard, like the rest).
  const applied: Applied = (opts.replay && letters.length > 0) || owner.projection.name === UNCLAIMED ? { changes: [] } : await owner.projection.apply(db, events)
  return prepared(owner, expected, fresh, skipped, events, letters, applied, now, opts)
}

/** The rest of prepareBatch, out of its async function (see there). */
function prepared(owner: BatchOwner, expected: number, fresh: BatchMessage[], skipped: number, events: SequencedEvent[], letters: DeadLetter[], applied: Applied, now: Date, opts: ApplyOptions): PreparedBatch {
  const { refused = [] } = applied
  if (refused.length > 0) letters.push(...refusedLetters(owner, fresh, events, refused))
  const stillFailing = opts.replay && letters.length > 0 ? letters.map((l) => l.reason).join('; ') : undefined
  const checkpoint = opts.replay ? expected : lastSeq(fresh, expected)
  return { owner, expected, checkpoint, fresh, skipped, events, letters, applied: stillFailing === undefined ? applied : { changes: [] }, refused: refused.length, stillFailing, now, opts }
}

/** The second half of applyBatch: the batch's one statement, alone (see applyBatch for the errors it throws). */
export async function commitBatch(db: Db, p: PreparedBatch, parent: Context | undefined = p.opts.trace): Promise<BatchResult> {
  const { owner, expected, checkpoint, skipped, stillFailing } = p
  const statement = batchStatement(owner, expected, checkpoint, p.fresh, p.letters, p.applied, p.now, p.opts)
  const [row] = await traced(owner.projection.name, p.events.length, 1, () => rowsOf<{ ok: number; rechecked: boolean; runs: string; events: string }>(db, statement), parent)
  if (Number(row.ok) !== 1) throw await whyNotWritten(db, owner, expected, row.rechecked)
  if (stillFailing !== undefined) return { applied: 0, skipped, deadLettered: 0, runs: [], events: [], checkpoint, stillFailing }
  return { applied: p.events.length - p.refused, skipped, deadLettered: p.letters.length, runs: parseInsertedRuns(row.runs), events: JSON.parse(row.events) as OutboxEvent[], checkpoint }
}

/** Whether commitGroup may take this batch (see there). */
export const groupable = (p: PreparedBatch): boolean => !p.opts.replay && !p.applied.recheck && p.stillFailing === undefined

/**
 * Runs the batches of several partitions of one projection (each `groupable`, no partition twice)
 * as ONE statement that commits on its own: every batch's writes, one version upsert for all their
 * changes (a channel's versions consecutive across the batches, in the order given), every
 * checkpoint; so one commit, and one hold of the shared channel version rows, where alone they
 * would be as many (see BatchCommitter). Each batch's checkpoint must be at its `expected`, fenced
 * by no newer token and in its stream, as commitBatch's guard asks, and the checkpoint row must
 * exist (a runner's does: claimFence): if any one is not, NOTHING is written and this returns
 * undefined; the caller runs each alone, which writes those that still may and throws the right
 * error for the others. Returns each batch's result, in the order given.
 */
export async function commitGroup(db: Db, ps: PreparedBatch[], links?: Link[], parent: Context | undefined = ps[0].opts.trace): Promise<BatchResult[] | undefined> {
  const events = ps.reduce((n, p) => n + p.events.length, 0)
  const [row] = await traced(ps[0].owner.projection.name, events, ps.length, () => rowsOf<Record<string, string | number>>(db, groupStatement(ps)), parent, links)
  if (Number(row.ok) !== ps.length) return undefined
  const runs = parseInsertedRunsByPart(String(row.runs), ps.length)
  return ps.map((p, i) => ({
    applied: p.events.length - p.refused,
    skipped: p.skipped,
    deadLettered: p.letters.length,
    runs: runs[i],
    events: row[`events_${i}`] === undefined ? [] : (JSON.parse(String(row[`events_${i}`])) as OutboxEvent[]),
    checkpoint: p.checkpoint,
  }))
}

/**
 * A batch statement inside its CLIENT span (`batches` > 1: a group statement), child of `parent`
 * (default: the active context). The span is not made active: nothing inside it makes spans or
 * logs, and the statement runs outside any AsyncLocalStorage store.
 */
function traced<T>(projection: string, events: number, batches: number, run: () => Promise<T>, parent?: Context, links?: Link[]): Promise<T> {
  const span = tracer.startSpan(
    'postgres batch statement',
    {
      kind: SpanKind.CLIENT,
      links,
      attributes: { 'db.system.name': 'postgresql', 'db.operation.name': 'WITH', 'fanfare.projection': projection, 'fanfare.events': events, ...(batches > 1 ? { 'fanfare.batches': batches } : {}) },
    },
    parent ?? context.active(),
  )
  return run()
    .catch((err) => {
      span.setStatus({ code: SpanStatusCode.ERROR, message: errorMessageOf(err) })
      throw err
    })
    .finally(() => span.end())
}

/** The batch's messages as events to apply, and dead letters for those that do not belong (see checkMessage). */
function checkMessages(owner: BatchOwner, fresh: BatchMessage[], refusedByPostgres?: ApplyOptions['refusedByPostgres']): { events: SequencedEvent[]; letters: DeadLetter[] } {
  const events: SequencedEvent[] = []
  const letters: DeadLetter[] = []
  for (const m of fresh) {
    const checked = checkMessage(owner, m)
    if (checked === null) continue
    const problem = refusedByPostgres?.seq === m.seq ? { reason: refusedByPostgres.reason, eventId: 'reason' in checked ? checked.eventId : checked.event.id } : checked
    if ('reason' in problem) {
      const payload = new TextDecoder().decode(m.body)
      letters.push({ projection: owner.projection.name, partition: owner.partition, streamSeq: m.seq, subject: m.subject, eventId: problem.eventId ?? guessEventId(payload), reason: problem.reason, payload, storedAt: m.storedAt })
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
    return { projection: projection.name, partition, streamSeq: m.seq, subject: m.subject, eventId: event.event.id, reason: r.reason, payload: new TextDecoder().decode(m.body), storedAt: m.storedAt }
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
  const outbox = outboxWrite(changes, now, when, oldestStored(fresh), owner.history)
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

/**
 * The group's one statement (see commitGroup). `checked` locks the group's checkpoint rows that
 * still are as each batch expects; `guard` moves them all only if every one was, and every other
 * write depends on `guard` as in batchStatement. Per batch `i`: its read-model writes `model_<i>_<j>`,
 * its dead letters `letters_<i>` and derived events `events_out_<i>`; then one outbox for all (its
 * version upsert last, as in batchStatement).
 */
function groupStatement(ps: PreparedBatch[]): SQL {
  const { projection } = ps[0].owner
  const rows = ps.map(({ owner, expected, checkpoint, now }) => ({ partition: owner.partition, expected, checkpoint, token: owner.token, stream: owner.stream, updated_at: now.toISOString() }))
  const columns = { partition: 'integer', expected: 'bigint', checkpoint: 'bigint', token: 'bigint', stream: 'text', updated_at: 'timestamptz' }
  const when = sql`exists (select 1 from guard)`
  // FOR UPDATE re-reads a row another transaction changed meanwhile (READ COMMITTED), so a newer
  // owner's write that committed first fails the count; the update then moves the rows it locked.
  const members: SQL[] = [
    sql`checked as (
      select c.partition from ${projectionCheckpoints} c join ${recordset('g', columns, rows)} on c.partition = g.partition
      where c.projection = ${projection.name} and c.seq = g.expected and c.fence <= g.token and c.stream = g.stream
      for update of c
    )`,
    sql`guard as (
      update ${projectionCheckpoints} c set seq = g.checkpoint, fence = g.token, updated_at = g.updated_at
      from ${recordset('g', columns, rows)}
      where c.projection = ${projection.name} and c.partition = g.partition and (select count(*) from checked) = ${ps.length}
      returning 1
    )`,
  ]
  const models: string[] = []
  const derivedBy: number[] = []
  ps.forEach((p, i) => {
    const { write, events: derived = [] } = p.applied
    const writes = write ? [write(when)].flat() : []
    writes.forEach((w, j) => {
      models.push(`model_${i}_${j}`)
      members.push(sql`${sql.raw(`model_${i}_${j}`)} as (${w.getSQL()} returning 1)`)
    })
    if (p.letters.length > 0) members.push(sql`${sql.raw(`letters_${i}`)} as (${deadLetterWrite(p.letters, when)})`)
    const out = eventOutboxWrite(derived, p.now, when, `events_out_${i}`)
    if (out) {
      derivedBy.push(i)
      members.push(out)
    }
  })
  const outbox = outboxWriteOf(
    ps.map((p) => ({ changes: p.applied.changes, at: runAt(p.now, oldestStored(p.fresh)) })),
    ps[0].now,
    when,
    ps[0].owner.history,
  )
  if (outbox) members.push(outbox)
  // The same order as batchStatement's: guard, read-model writes, derived events, then the outbox.
  return sql`with ${sql.join(members, sql`, `)}
        select (select count(*) from guard)::int as ok,
          ${models.length > 0 ? sql.raw(models.map((m) => `(select count(*) from ${m})`).join(' + ')) : sql`0`} as written,
          ${sql.join([...derivedBy.map((i) => sql`${insertedEventsOf(`events_out_${i}`)} as ${sql.raw(`events_${i}`)}`), sql`${outbox ? insertedRunsByPart : sql`'[]'`} as runs`], sql`, `)}`
}

/** The oldest stored time of a batch's messages: its runs carry it for fanfare_event_to_push_seconds. */
const oldestStored = (fresh: BatchMessage[]): Date => fresh.reduce((min, m) => (m.storedAt < min ? m.storedAt : min), fresh[0].storedAt)

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

/**
 * Decodes a message and checks it belongs to this projection and partition. The catch of unclaimed
 * messages applies none: one a projection consumes is skipped (null: a replay of a letter whose
 * subject is claimed now), any other is a dead letter.
 */
function checkMessage(owner: BatchOwner, m: BatchMessage): SequencedEvent | { reason: string; eventId?: string } | null {
  if (owner.projection.name === UNCLAIMED) {
    const reason = unclaimedReason(m.subject, owner.partitions)
    return reason === undefined ? null : { reason }
  }
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
