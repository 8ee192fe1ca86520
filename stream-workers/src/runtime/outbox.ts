import type { JetStreamClient } from '@nats-io/jetstream'
import { asc, inArray, lt, sql } from 'drizzle-orm'
import { runId } from '../../../core/channels'
import type { Db, Tx } from '../../../core/db/client'
import { changeOutbox, channelVersions } from '../../../core/db/schema'
import { subjects } from '../../../core/events'
import type { Logger } from '../../../core/logger'
import { chunkForInsert, type Change } from '../projections/types'
import { sleep } from './backoff'

/** A change run waiting in the outbox; `id` is its outbox row, `body` the JSON that is published. */
export type OutboxRun = { id: number; channel: string; epoch: string; version: number; body: string }

/**
 * Most UTF-16 units of changes in one run. A unit is at most 3 bytes of UTF-8, so a run stays well
 * under NATS' default 1 MB max_payload whatever its changes hold.
 */
const MAX_RUN_CHARS = 256 * 1024

/**
 * Gives each change the next version of its channel (+1 per change, in the given order) and
 * writes the changes to the outbox as runs (one row per channel, more if a run gets large), inside
 * the caller's transaction. One upsert increments every touched channel by its count and locks
 * those rows until commit, so concurrent batches touching the same channel (one board spans
 * partitions) get disjoint, consecutive versions. Channels are locked in sorted order to avoid
 * deadlocks between such batches. Returns the runs in version order per channel.
 */
export async function recordChanges(tx: Tx, changes: Change[], now: Date): Promise<OutboxRun[]> {
  if (changes.length === 0) return []
  const byChannel = new Map<string, Change['data'][]>()
  for (const c of changes) {
    const list = byChannel.get(c.channel)
    if (list) list.push(c.data)
    else byChannel.set(c.channel, [c.data])
  }
  const rows = [...byChannel].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([channel, list]) => ({ channel, version: list.length }))
  const first = new Map<string, { version: number; epoch: string }>()
  for (const chunk of chunkForInsert(rows, 2)) {
    const updated = await tx
      .insert(channelVersions)
      .values(chunk)
      .onConflictDoUpdate({ target: channelVersions.channel, set: { version: sql`${channelVersions.version} + excluded.version` } })
      .returning({ channel: channelVersions.channel, version: channelVersions.version, epoch: channelVersions.epoch })
    // The returned version is the last of this batch's run for that channel.
    for (const u of updated) first.set(u.channel, { version: Number(u.version) - byChannel.get(u.channel)!.length + 1, epoch: u.epoch })
  }
  const at = now.toISOString()
  const runs: Omit<OutboxRun, 'id'>[] = []
  for (const { channel } of rows) {
    const { version, epoch } = first.get(channel)!
    let next = version
    let parts: string[] = []
    let chars = 0
    const close = () => {
      // Built from JSON.stringify'd parts: each change is serialised once, for the row and the publish.
      const body = `{"channel":${JSON.stringify(channel)},"version":${next},"epoch":${JSON.stringify(epoch)},"at":"${at}","changes":[${parts.join(',')}]}`
      runs.push({ channel, epoch, version: next, body })
      next += parts.length
      parts = []
      chars = 0
    }
    for (const data of byChannel.get(channel)!) {
      const json = JSON.stringify(data)
      if (parts.length > 0 && chars + json.length > MAX_RUN_CHARS) close()
      parts.push(json)
      chars += json.length + 1
    }
    close()
  }
  const out: OutboxRun[] = []
  for (const chunk of chunkForInsert(runs, 4)) {
    const ids = await tx
      .insert(changeOutbox)
      .values(chunk.map((r) => ({ channel: r.channel, version: r.version, epoch: r.epoch, payload: r.body })))
      .returning({ id: changeOutbox.id })
    ids.forEach((r, i) => out.push({ id: Number(r.id), ...chunk[i] }))
  }
  return out
}

/**
 * Publishes runs on their channels' subjects and deletes the published rows. All are in flight at
 * once: one connection writes them in call order (version order per channel) and JetStream stores
 * them in that order, so a batch costs one round trip, not one per run. A run's msgID is its
 * runId, so a run published twice (runner and sweeper, or a retry) is stored once. Runs whose
 * publish failed stay in the outbox for the sweeper (API nodes hold later versions until they
 * arrive). Returns how many were published.
 */
export async function publishRuns(deps: { db: Db; js: JetStreamClient; prefix: string }, runs: OutboxRun[]): Promise<number> {
  const results = await Promise.allSettled(
    runs.map((r) => deps.js.publish(subjects.change(deps.prefix, r.channel), r.body, { msgID: runId(r) })),
  )
  const done = runs.filter((_, i) => results[i].status === 'fulfilled').map((r) => r.id)
  for (const chunk of chunkForInsert(done, 1)) {
    if (chunk.length > 0) await deps.db.delete(changeOutbox).where(inArray(changeOutbox.id, chunk))
  }
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected')
  if (failed) throw failed.reason
  return done.length
}

/**
 * Every `intervalMs`, publishes outbox rows older than `minAgeMs`: runs committed by a worker
 * that died (or lost NATS) between commit and publish. Runs in every worker process; duplicates are
 * absorbed by msgID. Returns a stop function.
 */
export function startOutboxSweeper(deps: {
  db: Db
  js: JetStreamClient
  prefix: string
  logger: Logger
  intervalMs?: number
  minAgeMs?: number
}): { stop: () => Promise<void> } {
  const interval = deps.intervalMs ?? 2_000
  const minAge = deps.minAgeMs ?? 2_000
  const abort = new AbortController()
  const loop = (async () => {
    while (!abort.signal.aborted) {
      await sleep(interval, abort.signal)
      if (abort.signal.aborted) break
      try {
        for (;;) {
          const rows = await deps.db
            .select()
            .from(changeOutbox)
            .where(lt(changeOutbox.createdAt, new Date(Date.now() - minAge)))
            .orderBy(asc(changeOutbox.channel), asc(changeOutbox.version))
            .limit(500)
          if (rows.length === 0) break
          const published = await publishRuns(deps, rows.map((r) => ({ id: Number(r.id), channel: r.channel, epoch: r.epoch, version: Number(r.version), body: r.payload })))
          deps.logger.info({ published }, 'outbox sweeper published left-over change runs')
          if (rows.length < 500 || abort.signal.aborted) break
        }
      } catch (err) {
        deps.logger.warn({ err }, 'outbox sweep failed; retrying next round')
      }
    }
  })()
  return {
    stop: async () => {
      abort.abort()
      await loop
    },
  }
}
