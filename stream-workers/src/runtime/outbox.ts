import type { JetStreamClient } from '@nats-io/jetstream'
import type { MsgHdrs } from '@nats-io/transport-node'
import { asc, lt, sql, type SQL } from 'drizzle-orm'
import type { Db, Tx } from '../../../core/db/client'
import { recordset } from '../../../core/db/recordset'
import { changeHistory, changeOutbox, channelVersions, eventOutbox } from '../../../core/db/schema'
import { dedupIdOf, keyOf, partitionOf, subjects, type StoredEvent } from '../../../core/events'
import type { Logger } from '../../../core/logger'
import type { Change } from '../projections/types'
import { every } from '../../../core/backoff'
import type { AckedPublisher } from '../../../core/acked-publish'
import { encodeLiveBatch, liveBatchMessages } from '../../../core/live-batches'

/** A change run waiting in the outbox; `body` is the JSON that is published. */
export type OutboxRun = { channel: string; epoch: string; version: number; body: string }

/**
 * An event a projection derived, waiting in the event outbox (a finished match's scores): `body`
 * is the StoredEvent JSON, published on its partition's subject with `msgId` as Nats-Msg-Id.
 */
export type OutboxEvent = { msgId: string; body: string }

/**
 * The member of the batch statement that writes derived events to the event outbox, `when` the
 * guard held, ending with `events_out` (the rows inserted). A row already there (the same event
 * derived again: impossible after a committed batch, since the checkpoint moved) is kept as it is.
 * Undefined when there are none. `name`: the member's name (one per batch in a group statement).
 */
export function eventOutboxWrite(events: StoredEvent[], now: Date, when: SQL, name = 'events_out'): SQL | undefined {
  if (events.length === 0) return undefined
  const rows = events.map((e) => ({ msg_id: dedupIdOf(e), payload: JSON.stringify(e) }))
  return sql`${sql.raw(name)} as (
      insert into ${eventOutbox} (msg_id, payload, created_at)
      select msg_id, payload, ${now.toISOString()}::timestamptz from ${recordset('e', { msg_id: 'text', payload: 'text' }, rows)} where ${when}
      on conflict (msg_id) do nothing
      returning msg_id, payload
    )`
}

/** The batch statement's select-list expression giving the inserted events as JSON (see eventOutboxWrite). */
export const insertedEventsOf = (name: string) => sql`coalesce((select json_agg(json_build_object('msgId', msg_id, 'body', payload)) from ${sql.raw(name)}), '[]')::text`
export const insertedEvents = insertedEventsOf('events_out')

/** The event stream subject of an outbox event: its partition's, by its key (as the API publishes it). */
export function eventSubject(prefix: string, partitions: number, body: string): string {
  const e = JSON.parse(body) as StoredEvent
  return subjects.event(prefix, partitionOf(keyOf(e), partitions), e.type)
}

/**
 * Publishes derived events with their msgIds and hands the published ones to the cleaner. Like
 * publishRuns, all in flight at once; a failed one stays in the outbox for the sweeper. Returns how
 * many were published.
 */
export async function publishEvents(deps: { js: JetStreamClient; prefix: string; partitions: number; cleaner: OutboxCleaner }, events: OutboxEvent[]): Promise<number> {
  const results = await Promise.allSettled(events.map((e) => deps.js.publish(eventSubject(deps.prefix, deps.partitions, e.body), e.body, { msgID: e.msgId })))
  const done = events.filter((_, i) => results[i].status === 'fulfilled').map((e) => e.msgId)
  deps.cleaner.publishedEvents(done)
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected')
  if (failed) throw failed.reason
  return done.length
}

/**
 * Most UTF-16 units of changes in one run. A unit is at most 3 bytes of UTF-8, so a run stays well
 * under NATS' default 1 MB max_payload whatever its changes hold.
 */
const MAX_RUN_CHARS = 256 * 1024

/**
 * The changes of one batch for the outbox (see outboxWriteOf): `at` is the JSON that follows
 * `"at":` in each of its runs (the batch's time, and its oldest event's stored time).
 */
export type OutboxSource = { changes: Change[]; at: string }

/** The `at` of a batch's runs (see OutboxSource): `now`, and `storedAt` as `stored` when known. */
export const runAt = (now: Date, storedAt?: Date): string => JSON.stringify(now.toISOString()) + (storedAt ? `,"stored":${JSON.stringify(storedAt.toISOString())}` : '')

/**
 * The members of the batch statement (see applyBatch) that give each change the next version of
 * its channel (+1 per change, in the given order) and write the changes to the outbox as runs (one
 * row per channel, more if a run gets large), ending with `outbox`, the inserted rows. They run
 * only `when` the batch's guard held. The version upsert increments every touched channel by its
 * count and locks those rows until the statement commits, so concurrent batches touching the same
 * channel (one board spans partitions) get disjoint, consecutive versions; channels are locked in
 * sorted order to avoid deadlocks between such batches. Undefined when there are no changes.
 */
export function outboxWrite(changes: Change[], now: Date, when: SQL, storedAt?: Date, history = false): SQL | undefined {
  return outboxWriteOf([{ changes, at: runAt(now, storedAt) }], now, when, history)
}

/**
 * outboxWrite for several batches in one statement (see BatchCommitter): one version upsert for
 * all their changes, a channel's versions consecutive across them in the order given (the first
 * batch's changes first), and each run of one batch only, tagged with its index as `part` in
 * `numbered` (see insertedRunsByPart). `history` (live batches): the runs also go to
 * change_history (member `history`), where they stay after the outbox rows are deleted.
 */
export function outboxWriteOf(sources: OutboxSource[], now: Date, when: SQL, history = false): SQL | undefined {
  const byChannel = new Map<string, Change['data'][][]>()
  sources.forEach(({ changes }, part) => {
    for (const c of changes) {
      let parts = byChannel.get(c.channel)
      if (!parts) byChannel.set(c.channel, (parts = sources.map(() => [])))
      parts[part].push(c.data)
    }
  })
  if (byChannel.size === 0) return undefined
  // Each run: its batch, its channel, its channel's total in this statement, its offset from the
  // channel's first new version, and its changes as a JSON array (each change serialised once, here).
  const runs: { part: number; channel: string; total: number; offset: number; changes: string; run_at: string }[] = []
  for (const channel of [...byChannel.keys()].sort()) {
    const parts = byChannel.get(channel)!
    const total = parts.reduce((n, list) => n + list.length, 0)
    let offset = 0
    parts.forEach((list, part) => {
      let items: string[] = []
      let chars = 0
      const close = () => {
        runs.push({ part, channel, total, offset, changes: `[${items.join(',')}]`, run_at: sources[part].at })
        offset += items.length
        items = []
        chars = 0
      }
      for (const data of list) {
        const json = JSON.stringify(data)
        if (items.length > 0 && chars + json.length > MAX_RUN_CHARS) close()
        items.push(json)
        chars += json.length + 1
      }
      if (items.length > 0) close()
    })
  }
  return sql`pending as (
      select * from ${recordset('r', { part: 'integer', channel: 'text', total: 'bigint', offset: 'bigint', changes: 'text', run_at: 'text' }, runs)} where ${when}
    ), versions as (
      insert into ${channelVersions} (channel, version)
      select distinct channel, total from pending order by channel
      on conflict (channel) do update set version = ${channelVersions}.version + excluded.version
      returning channel, version, epoch
    ), numbered as (
      select p.part, p.channel, v.epoch, v.version - p.total + 1 + p.offset as version, p.changes, p.offset, p.run_at
      from pending p join versions v on v.channel = p.channel
    ), outbox as (
      insert into ${changeOutbox} (channel, epoch, version, payload, created_at)
      select channel, epoch, version,
        '{"channel":' || to_json(channel)::text || ',"version":' || version::text || ',"epoch":' || to_json(epoch)::text
          || ',"at":' || run_at || ',"changes":' || changes || '}',
        ${now.toISOString()}::timestamptz
      from numbered order by channel, "offset"
      returning channel, epoch, version, payload
    )${
      history
        ? sql`, history as (
      insert into ${changeHistory} (channel, epoch, version, payload, created_at)
      select channel, epoch, version, payload, ${now.toISOString()}::timestamptz from outbox
      returning 1
    )`
        : sql``
    }`
}

/**
 * The runs the `outbox` member of outboxWriteOf inserted, each with the index of its batch as
 * `part`, as one JSON text column (see parseInsertedRunsByPart).
 */
export const insertedRunsByPart = sql`coalesce((select json_agg(json_build_object('part', n.part, 'channel', o.channel, 'epoch', o.epoch, 'version', o.version, 'payload', o.payload))
  from outbox o join numbered n on n.channel = o.channel and n.version = o.version), '[]')::text`

/** Parses `insertedRunsByPart` into each batch's runs (`parts` batches), in version order per channel. */
export function parseInsertedRunsByPart(json: string, parts: number): OutboxRun[][] {
  const byPart: OutboxRun[][] = Array.from({ length: parts }, () => [])
  for (const r of JSON.parse(json) as (Parameters<typeof runOfRow>[0] & { part: number })[]) byPart[r.part].push(runOfRow(r))
  return byPart.map(sortRuns)
}

/** The runs the `outbox` member inserted, as one JSON text column of the batch statement's result. */
export const insertedRuns = sql`coalesce((select json_agg(json_build_object('channel', channel, 'epoch', epoch, 'version', version, 'payload', payload)) from outbox), '[]')::text`

/** An outbox row (or its JSON) as a run to publish. */
const runOfRow = (r: { channel: string; epoch: string; version: string | number; payload: string }): OutboxRun => ({
  channel: r.channel,
  epoch: r.epoch,
  version: Number(r.version),
  body: r.payload,
})

/** Parses `insertedRuns`: the runs in version order per channel. */
export function parseInsertedRuns(json: string): OutboxRun[] {
  return sortRuns((JSON.parse(json) as Parameters<typeof runOfRow>[0][]).map(runOfRow))
}

const sortRuns = (runs: OutboxRun[]): OutboxRun[] => runs.sort((a, b) => (a.channel < b.channel ? -1 : a.channel > b.channel ? 1 : a.version - b.version))

/**
 * Publishes runs on their channels' subjects and hands the published ones to the cleaner, which
 * deletes their rows. All are in flight at once through the process's AckedPublisher (see
 * core/acked-publish.ts: one subscription takes every acknowledgement, ~3x less CPU per run than a
 * `js.publish` each): one connection writes them in call order (version order per channel) and
 * JetStream stores them in that order, so a batch costs one round trip, not one per run. No msgID:
 * a run published twice (a crash after publishing and before the row was deleted, then the
 * sweeper) is stored twice and read once, since API nodes drop versions they already have and
 * resumes merge by version. Such copies are rare (startOutboxSweeper publishes each left-over row
 * once); a msgID per run would cost a header per message and a de-duplication entry per run in
 * nats-server (millions at full fan-out). Runs not acknowledged stay in the outbox for the sweeper
 * (API nodes hold later versions until they arrive). Returns how many were published. `headers`
 * (a trace context) go on every run.
 */
export async function publishRuns(deps: { publisher: AckedPublisher; prefix: string; cleaner: OutboxCleaner }, runs: OutboxRun[], headers?: MsgHdrs): Promise<number> {
  const { stored, error } = await deps.publisher.publish(
    runs.map((r) => ({ subject: subjects.change(deps.prefix, r.channel), body: r.body })),
    headers ? { headers } : undefined,
  )
  const done = runs.filter((_, i) => stored[i]).map(({ channel, epoch, version }) => ({ channel, epoch, version }))
  deps.cleaner.published(done)
  if (error) throw error
  return done.length
}

/**
 * publishRuns for live batches: the batch's runs as live batches (core/live-batches.ts:
 * one message per channel kind on `partition`'s subject, split only past the payload limit), so a
 * batch touching many channels stores one message, not one per channel. API nodes check the
 * stream sequence of each message as of a run, so a lost batch is filled or re-synced as a lost
 * run is. The runs of a message are published (and their outbox rows deleted) together, or not at
 * all (the sweeper then publishes each left-over run alone on its channel's subject, which change
 * feeds take too). With `compress` (the change streams record compressed batches) a message long
 * enough is compressed (encodeLiveBatch). Returns how many runs were published.
 */
export async function publishBatch(deps: { publisher: AckedPublisher; prefix: string; partition: number; cleaner: OutboxCleaner; compress: boolean }, runs: OutboxRun[], headers?: MsgHdrs): Promise<number> {
  const messages = liveBatchMessages(deps.prefix, deps.partition, runs)
  const { stored, error } = await deps.publisher.publish(
    messages.map(({ subject, body }) => ({ subject, body: encodeLiveBatch(body, deps.compress) })),
    headers ? { headers } : undefined,
  )
  const done = messages.filter((_, i) => stored[i]).flatMap((m) => m.items.map(({ channel, epoch, version }) => ({ channel, epoch, version })))
  deps.cleaner.published(done)
  if (error) throw error
  return done.length
}

type RunKey = { channel: string; epoch: string; version: number }

/** Deletes the event outbox rows of the given msgIds. */
const deleteEvents = (q: Db | Tx, ids: string[]) =>
  q.delete(eventOutbox).where(sql`${eventOutbox.msgId} in (select msg_id from ${recordset('d', { msg_id: 'text' }, ids.map((msg_id) => ({ msg_id })))})`)

/** Deletes the outbox rows of the given runs. */
const deleteRuns = (q: Db | Tx, keys: RunKey[]) =>
  q
    .delete(changeOutbox)
    .where(
      sql`(${changeOutbox.channel}, ${changeOutbox.epoch}, ${changeOutbox.version}) in (select channel, epoch, version from ${recordset('d', { channel: 'text', epoch: 'text', version: 'bigint' }, keys)})`,
    )

/** Deletes the outbox rows of published runs and events (see startOutboxCleaner). */
export type OutboxCleaner = {
  published: (runs: RunKey[]) => void
  publishedEvents: (msgIds: string[]) => void
  /** Deletes what is left to delete, then stops. */
  stop: () => Promise<void>
}

/**
 * Deletes the rows of published runs and events for every runner of the process, in one statement
 * per `flushRows` keys, or `maxDelayMs` after the first key waiting, whichever comes first; never
 * two statements at once. Driven by what is published, not by a clock: a process makes at most one
 * delete (a commit) per `maxDelayMs`, or one per `flushRows` rows when it publishes more, where a
 * 50 ms timer made every process add 20 a second of its own under load; an idle process makes
 * none and is not woken. A row deleted late is
 * harmless: the sweeper only takes rows older than its minimum age (2 s, well above `maxDelayMs`).
 * Rows a failed delete leaves are tried again `maxDelayMs` later; rows a crash leaves are the
 * sweeper's (their runs are then published again: API nodes drop the copy).
 */
export function startOutboxCleaner(deps: { db: Db; logger: Logger; flushRows?: number; maxDelayMs?: number }): OutboxCleaner {
  const flushRows = deps.flushRows ?? 1_000
  const maxDelayMs = deps.maxDelayMs ?? 250
  let pending: RunKey[] = []
  let pendingEvents: string[] = []
  let timer: ReturnType<typeof setTimeout> | undefined
  let flushing: Promise<void> | undefined
  let stopped = false
  const flush = async () => {
    if (pendingEvents.length > 0) {
      const ids = pendingEvents
      pendingEvents = []
      try {
        await deleteEvents(deps.db, ids)
      } catch (err) {
        pendingEvents = ids.concat(pendingEvents)
        throw err
      }
    }
    if (pending.length === 0) return
    const keys = pending
    pending = []
    try {
      await deleteRuns(deps.db, keys)
    } catch (err) {
      pending = keys.concat(pending)
      throw err
    }
  }
  const onError = (err: unknown) => deps.logger.warn({ err, rows: pending.length }, 'deleting published outbox rows failed; retrying')
  const waiting = () => pending.length + pendingEvents.length
  // After a failed delete, nothing is tried before the retry timer (no tight loop while Postgres is down).
  let retrying = false
  /** Starts a flush now if none is running; whatever is left after it is scheduled again. */
  const flushNow = () => {
    if (timer) clearTimeout(timer)
    timer = undefined
    retrying = false
    if (flushing) return
    flushing = flush()
      .then(
        () => false,
        (err) => (onError(err), true),
      )
      .then((failed) => {
        flushing = undefined
        if (stopped) return
        if (failed) {
          retrying = true
          timer = setTimeout(flushNow, maxDelayMs)
        } else schedule()
      })
  }
  /** Rows waiting: flush at once if there are enough, else after `maxDelayMs`. */
  const schedule = () => {
    if (stopped || waiting() === 0 || flushing || retrying) return
    if (waiting() >= flushRows) flushNow()
    else timer ??= setTimeout(flushNow, maxDelayMs)
  }
  return {
    published: (runs) => {
      for (const r of runs) pending.push(r)
      schedule()
    },
    publishedEvents: (ids) => {
      for (const id of ids) pendingEvents.push(id)
      schedule()
    },
    stop: async () => {
      stopped = true
      if (timer) clearTimeout(timer)
      timer = undefined
      await flushing
      await flush().catch(onError)
    },
  }
}

export type OutboxSweeperDeps = {
  db: Db
  js: JetStreamClient
  prefix: string
  /** Partition count of the deployment: the subject of a derived event depends on it. */
  partitions: number
  logger: Logger
  /** Pause between rounds. Default 2 s. */
  intervalMs?: number
  /** Rows younger than this are their runner's to publish. Default 2 s. */
  minAgeMs?: number
  /** Rows claimed, published and deleted per transaction. Default 500. */
  pageSize?: number
  /** How long a publish may wait for JetStream; bounds how long a page's transaction stays open. Default 2 s. */
  publishTimeoutMs?: number
}

/**
 * Every `intervalMs`, publishes outbox rows older than `minAgeMs`: change runs and derived events
 * committed by a worker that died (or lost NATS) between commit and publish. Runs in every worker
 * process, and still publishes each left-over row once: a page is claimed, published and deleted
 * in one transaction. Its rows are selected `FOR UPDATE SKIP LOCKED`, so another sweeper (another
 * process) skips them and takes the next rows instead of publishing the same ones; they are
 * deleted before commit, so the next page (and the next round) starts after them. A row whose
 * publish failed is kept (the published ones of the page are deleted) and the round ends, to try
 * again at the next. Each copy of a run would take a history slot of its channel on the change
 * stream (`max_msgs_per_subject`) and push real history out, so that resumes fall back to
 * snapshots; a derived event carries its msgId, so a copy within the dedup window is dropped by
 * JetStream. On PGlite (one connection) the transaction holds the connection while it publishes:
 * pages are bounded, and so is the publish wait (`publishTimeoutMs`). Returns a stop function.
 */
export function startOutboxSweeper(deps: OutboxSweeperDeps): { stop: () => Promise<void> } {
  const minAge = deps.minAgeMs ?? 2_000
  const pageSize = deps.pageSize ?? 500
  return every(
    deps.intervalMs ?? 2_000,
    async (signal) => {
      const sweep = async <K>(outbox: SweptOutbox<K>) => {
        for (;;) {
          const claimed = await sweepPage(deps, outbox, new Date(Date.now() - minAge), pageSize)
          if (claimed > 0) deps.logger.info({ published: claimed, outbox: outbox.name }, 'outbox sweeper published left-over rows')
          if (claimed < pageSize || signal.aborted) break
        }
      }
      await sweep(runsOutbox)
      await sweep(eventsOutbox)
    },
    (err) => deps.logger.warn({ err }, 'outbox sweep failed; retrying next round'),
  )
}

/** One outbox table as the sweeper handles it: claim a page, say what to publish, delete the published. */
type SweptOutbox<K> = {
  name: string
  claim: (tx: Tx, olderThan: Date, pageSize: number) => Promise<{ key: K; subject: string; body: string; msgID?: string }[]>
  remove: (tx: Tx, keys: K[]) => Promise<unknown>
}

const runsOutbox: SweptOutbox<RunKey> = {
  name: 'change_outbox',
  claim: async (tx, olderThan, pageSize) => {
    const rows = await tx
      .select()
      .from(changeOutbox)
      .where(lt(changeOutbox.createdAt, olderThan))
      .orderBy(asc(changeOutbox.channel), asc(changeOutbox.version))
      .limit(pageSize)
      .for('update', { skipLocked: true })
    // In version order per channel: JetStream stores them in that order.
    return rows.map(runOfRow).map((r) => ({ key: { channel: r.channel, epoch: r.epoch, version: r.version }, subject: r.channel, body: r.body }))
  },
  remove: (tx, keys) => deleteRuns(tx, keys),
}

const eventsOutbox: SweptOutbox<string> = {
  name: 'event_outbox',
  claim: async (tx, olderThan, pageSize) => {
    const rows = await tx.select().from(eventOutbox).where(lt(eventOutbox.createdAt, olderThan)).orderBy(asc(eventOutbox.createdAt)).limit(pageSize).for('update', { skipLocked: true })
    return rows.map((r) => ({ key: r.msgId, subject: '', body: r.payload, msgID: r.msgId }))
  },
  remove: (tx, keys) => deleteEvents(tx, keys),
}

/**
 * One page of one outbox: claims up to `pageSize` rows older than `olderThan` that no other
 * transaction holds, publishes them and deletes the published ones, then commits. Returns how many
 * rows it claimed; throws (after committing the deletes) if a publish failed.
 */
async function sweepPage<K>(deps: OutboxSweeperDeps, outbox: SweptOutbox<K>, olderThan: Date, pageSize: number): Promise<number> {
  const { claimed, failed } = await deps.db.transaction(async (tx) => {
    const rows = await outbox.claim(tx, olderThan, pageSize)
    if (rows.length === 0) return { claimed: 0, failed: undefined }
    const timeout = deps.publishTimeoutMs ?? 2_000
    const results = await Promise.allSettled(
      rows.map((r) =>
        r.msgID === undefined
          ? deps.js.publish(subjects.change(deps.prefix, r.subject), r.body, { timeout })
          : deps.js.publish(eventSubject(deps.prefix, deps.partitions, r.body), r.body, { timeout, msgID: r.msgID }),
      ),
    )
    const published = rows.filter((_, i) => results[i].status === 'fulfilled').map((r) => r.key)
    if (published.length > 0) await outbox.remove(tx, published)
    return { claimed: rows.length, failed: results.find((r): r is PromiseRejectedResult => r.status === 'rejected') }
  })
  if (failed) throw failed.reason
  return claimed
}
