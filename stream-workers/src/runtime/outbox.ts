import type { JetStreamClient } from '@nats-io/jetstream'
import type { MsgHdrs } from '@nats-io/transport-node'
import { asc, lt, sql, type SQL } from 'drizzle-orm'
import type { Db, Tx } from '../../../core/db/client'
import { recordset } from '../../../core/db/recordset'
import { changeOutbox, channelVersions } from '../../../core/db/schema'
import { subjects } from '../../../core/events'
import type { Logger } from '../../../core/logger'
import type { Change } from '../projections/types'
import { every } from '../../../core/backoff'

/** A change run waiting in the outbox; `body` is the JSON that is published. */
export type OutboxRun = { channel: string; epoch: string; version: number; body: string }

/**
 * Most UTF-16 units of changes in one run. A unit is at most 3 bytes of UTF-8, so a run stays well
 * under NATS' default 1 MB max_payload whatever its changes hold.
 */
const MAX_RUN_CHARS = 256 * 1024

/**
 * The members of the batch statement (see applyBatch) that give each change the next version of
 * its channel (+1 per change, in the given order) and write the changes to the outbox as runs (one
 * row per channel, more if a run gets large), ending with `outbox`, the inserted rows. They run
 * only `when` the batch's guard held. The version upsert increments every touched channel by its
 * count and locks those rows until the statement commits, so concurrent batches touching the same
 * channel (one board spans partitions) get disjoint, consecutive versions; channels are locked in
 * sorted order to avoid deadlocks between such batches. Undefined when there are no changes.
 */
export function outboxWrite(changes: Change[], now: Date, when: SQL, storedAt?: Date): SQL | undefined {
  if (changes.length === 0) return undefined
  const byChannel = new Map<string, Change['data'][]>()
  for (const c of changes) {
    const list = byChannel.get(c.channel)
    if (list) list.push(c.data)
    else byChannel.set(c.channel, [c.data])
  }
  // Each run: its channel, its channel's total in this batch, its offset from the channel's first
  // new version, and its changes as a JSON array (each change serialised once, here).
  const runs: { channel: string; total: number; offset: number; changes: string }[] = []
  for (const channel of [...byChannel.keys()].sort()) {
    const list = byChannel.get(channel)!
    let offset = 0
    let parts: string[] = []
    let chars = 0
    const close = () => {
      runs.push({ channel, total: list.length, offset, changes: `[${parts.join(',')}]` })
      offset += parts.length
      parts = []
      chars = 0
    }
    for (const data of list) {
      const json = JSON.stringify(data)
      if (parts.length > 0 && chars + json.length > MAX_RUN_CHARS) close()
      parts.push(json)
      chars += json.length + 1
    }
    close()
  }
  const at = JSON.stringify(now.toISOString()) + (storedAt ? `,"stored":${JSON.stringify(storedAt.toISOString())}` : '')
  return sql`pending as (
      select * from ${recordset('r', { channel: 'text', total: 'bigint', offset: 'bigint', changes: 'text' }, runs)} where ${when}
    ), versions as (
      insert into ${channelVersions} (channel, version)
      select distinct channel, total from pending order by channel
      on conflict (channel) do update set version = ${channelVersions}.version + excluded.version
      returning channel, version, epoch
    ), numbered as (
      select p.channel, v.epoch, v.version - p.total + 1 + p.offset as version, p.changes, p.offset
      from pending p join versions v on v.channel = p.channel
    ), outbox as (
      insert into ${changeOutbox} (channel, epoch, version, payload, created_at)
      select channel, epoch, version,
        '{"channel":' || to_json(channel)::text || ',"version":' || version::text || ',"epoch":' || to_json(epoch)::text
          || ',"at":' || ${at} || ',"changes":' || changes || '}',
        ${now.toISOString()}::timestamptz
      from numbered order by channel, "offset"
      returning channel, epoch, version, payload
    )`
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
  return (JSON.parse(json) as Parameters<typeof runOfRow>[0][])
    .map(runOfRow)
    .sort((a, b) => (a.channel < b.channel ? -1 : a.channel > b.channel ? 1 : a.version - b.version))
}

/**
 * Publishes runs on their channels' subjects and hands the published ones to the cleaner, which
 * deletes their rows. All are in flight at once: one connection writes them in call order (version
 * order per channel) and JetStream stores them in that order, so a batch costs one round trip, not
 * one per run. No msgID: a run published twice (a crash after publishing and before the row was
 * deleted, then the sweeper) is stored twice and read once, since API nodes drop versions they
 * already have and resumes merge by version. Such copies are rare (startOutboxSweeper publishes
 * each left-over row once); a msgID per run would cost a header per message and a de-duplication
 * entry per run in nats-server (millions at full fan-out). Runs whose publish failed stay in the
 * outbox for the sweeper (API nodes hold later versions until they arrive). Returns how many were
 * published. `headers` (a trace context) go on every run.
 */
export async function publishRuns(deps: { js: JetStreamClient; prefix: string; cleaner: OutboxCleaner }, runs: OutboxRun[], headers?: MsgHdrs): Promise<number> {
  const results = await Promise.allSettled(
    runs.map((r) => deps.js.publish(subjects.change(deps.prefix, r.channel), r.body, headers ? { headers } : undefined)),
  )
  const done = runs.filter((_, i) => results[i].status === 'fulfilled').map(({ channel, epoch, version }) => ({ channel, epoch, version }))
  deps.cleaner.published(done)
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected')
  if (failed) throw failed.reason
  return done.length
}

type RunKey = { channel: string; epoch: string; version: number }

/** Deletes the outbox rows of the given runs. */
const deleteRuns = (q: Db | Tx, keys: RunKey[]) =>
  q
    .delete(changeOutbox)
    .where(
      sql`(${changeOutbox.channel}, ${changeOutbox.epoch}, ${changeOutbox.version}) in (select channel, epoch, version from ${recordset('d', { channel: 'text', epoch: 'text', version: 'bigint' }, keys)})`,
    )

/** Deletes the outbox rows of published runs (see startOutboxCleaner). */
export type OutboxCleaner = {
  published: (runs: RunKey[]) => void
  /** Deletes what is left to delete, then stops. */
  stop: () => Promise<void>
}

/**
 * Deletes the rows of published runs every `intervalMs`, in one statement for every runner of the
 * process, instead of one statement per batch. A row deleted late is harmless: the sweeper only
 * takes rows older than its minimum age (far above the interval). Rows a failed delete leaves are
 * tried again at the next round; rows a crash leaves are the sweeper's (their runs are then
 * published again: API nodes drop the copy).
 */
export function startOutboxCleaner(deps: { db: Db; logger: Logger; intervalMs?: number }): OutboxCleaner {
  let pending: RunKey[] = []
  const flush = async () => {
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
  const onError = (err: unknown) => deps.logger.warn({ err, rows: pending.length }, 'deleting published outbox rows failed; retrying next round')
  const loop = every(deps.intervalMs ?? 50, flush, onError)
  return {
    published: (runs) => {
      for (const r of runs) pending.push(r)
    },
    stop: async () => {
      await loop.stop()
      await flush().catch(onError)
    },
  }
}

export type OutboxSweeperDeps = {
  db: Db
  js: JetStreamClient
  prefix: string
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
 * Every `intervalMs`, publishes outbox rows older than `minAgeMs`: runs committed by a worker that
 * died (or lost NATS) between commit and publish. Runs in every worker process, and still publishes
 * each left-over run once: a page is claimed, published and deleted in one transaction. Its rows
 * are selected `FOR UPDATE SKIP LOCKED`, so another sweeper (another process) skips them and takes
 * the next rows instead of publishing the same ones; they are deleted before commit, so the next
 * page (and the next round) starts after them. A run whose publish failed keeps its row (the
 * published ones of the page are deleted) and the round ends, to try again at the next. Each copy
 * of a run would take a history slot of its channel on the change stream (`max_msgs_per_subject`)
 * and push real history out, so that resumes fall back to snapshots. On PGlite (one connection)
 * the transaction holds the connection while it publishes: pages are bounded, and so is the
 * publish wait (`publishTimeoutMs`). Returns a stop function.
 */
export function startOutboxSweeper(deps: OutboxSweeperDeps): { stop: () => Promise<void> } {
  const minAge = deps.minAgeMs ?? 2_000
  const pageSize = deps.pageSize ?? 500
  return every(
    deps.intervalMs ?? 2_000,
    async (signal) => {
      for (;;) {
        const claimed = await sweepPage(deps, new Date(Date.now() - minAge), pageSize)
        if (claimed > 0) deps.logger.info({ published: claimed }, 'outbox sweeper published left-over change runs')
        if (claimed < pageSize || signal.aborted) break
      }
    },
    (err) => deps.logger.warn({ err }, 'outbox sweep failed; retrying next round'),
  )
}

/**
 * One page: claims up to `pageSize` rows older than `olderThan` that no other transaction holds, in
 * version order per channel, publishes their runs and deletes the published ones, then commits.
 * Returns how many rows it claimed; throws (after committing the deletes) if a publish failed.
 */
async function sweepPage(deps: OutboxSweeperDeps, olderThan: Date, pageSize: number): Promise<number> {
  const { claimed, failed } = await deps.db.transaction(async (tx) => {
    const rows = await tx
      .select()
      .from(changeOutbox)
      .where(lt(changeOutbox.createdAt, olderThan))
      .orderBy(asc(changeOutbox.channel), asc(changeOutbox.version))
      .limit(pageSize)
      .for('update', { skipLocked: true })
    if (rows.length === 0) return { claimed: 0, failed: undefined }
    const runs = rows.map(runOfRow)
    // All in flight at once, in version order per channel: JetStream stores them in that order.
    const results = await Promise.allSettled(
      runs.map((r) => deps.js.publish(subjects.change(deps.prefix, r.channel), r.body, { timeout: deps.publishTimeoutMs ?? 2_000 })),
    )
    const published = runs.filter((_, i) => results[i].status === 'fulfilled').map(({ channel, epoch, version }) => ({ channel, epoch, version }))
    if (published.length > 0) await deleteRuns(tx, published)
    return { claimed: rows.length, failed: results.find((r): r is PromiseRejectedResult => r.status === 'rejected') }
  })
  if (failed) throw failed.reason
  return claimed
}
