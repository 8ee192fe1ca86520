import type { JetStreamClient } from '@nats-io/jetstream'
import { asc, inArray, lt, sql } from 'drizzle-orm'
import { noticeId, type ChangeNotice } from '../../../core/channels'
import type { Db, Tx } from '../../../core/db/client'
import { changeOutbox, channelVersions } from '../../../core/db/schema'
import { subjects } from '../../../core/events'
import type { Logger } from '../../../core/logger'
import { chunkForInsert, type Change } from '../projections/types'
import { sleep } from './backoff'

/** A notice waiting in the outbox; `id` is its outbox row. */
export type OutboxNotice = { id: number; notice: ChangeNotice }

/**
 * Gives each change the next version of its channel (+1 per change, in the given order) and
 * writes it to the outbox, inside the caller's transaction. One upsert increments every touched
 * channel by its count and locks those rows until commit, so concurrent batches touching the same
 * channel (one board spans partitions) get disjoint, consecutive versions. Channels are locked in
 * sorted order to avoid deadlocks between such batches.
 */
export async function recordChanges(tx: Tx, changes: Change[], now: Date): Promise<OutboxNotice[]> {
  if (changes.length === 0) return []
  const counts = new Map<string, number>()
  for (const c of changes) counts.set(c.channel, (counts.get(c.channel) ?? 0) + 1)
  const rows = [...counts].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([channel, version]) => ({ channel, version }))
  const next = new Map<string, number>()
  const epochs = new Map<string, string>()
  for (const chunk of chunkForInsert(rows, 2)) {
    const updated = await tx
      .insert(channelVersions)
      .values(chunk)
      .onConflictDoUpdate({ target: channelVersions.channel, set: { version: sql`${channelVersions.version} + excluded.version` } })
      .returning({ channel: channelVersions.channel, version: channelVersions.version, epoch: channelVersions.epoch })
    // The returned version is the last of this batch's run for that channel.
    for (const u of updated) {
      next.set(u.channel, Number(u.version) - counts.get(u.channel)! + 1)
      epochs.set(u.channel, u.epoch)
    }
  }
  const at = now.toISOString()
  const notices: ChangeNotice[] = changes.map((c) => {
    const version = next.get(c.channel)!
    next.set(c.channel, version + 1)
    return { channel: c.channel, version, epoch: epochs.get(c.channel)!, data: c.data, at }
  })
  const out: OutboxNotice[] = []
  for (const chunk of chunkForInsert(notices, 3)) {
    const ids = await tx
      .insert(changeOutbox)
      .values(chunk.map((n) => ({ channel: n.channel, version: n.version, payload: n })))
      .returning({ id: changeOutbox.id })
    ids.forEach((r, i) => out.push({ id: Number(r.id), notice: chunk[i] }))
  }
  return out
}

/**
 * Publishes notices on their channels' subjects and deletes the published rows. All are in flight
 * at once: one connection writes them in call order (version order per channel) and JetStream
 * stores them in that order, so a batch costs one round trip, not one per notice. A notice's msgID
 * is `channel@version`, so a notice published twice (runner and sweeper, or a retry) is stored
 * once. Notices whose publish failed stay in the outbox for the sweeper (API nodes hold later
 * versions until they arrive). Returns how many were published.
 */
export async function publishNotices(deps: { db: Db; js: JetStreamClient; prefix: string }, notices: OutboxNotice[]): Promise<number> {
  const results = await Promise.allSettled(
    notices.map(({ notice }) => deps.js.publish(subjects.change(deps.prefix, notice.channel), JSON.stringify(notice), { msgID: noticeId(notice) })),
  )
  const done = notices.filter((_, i) => results[i].status === 'fulfilled').map((n) => n.id)
  for (const chunk of chunkForInsert(done, 1)) {
    if (chunk.length > 0) await deps.db.delete(changeOutbox).where(inArray(changeOutbox.id, chunk))
  }
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected')
  if (failed) throw failed.reason
  return done.length
}

/**
 * Every `intervalMs`, publishes outbox rows older than `minAgeMs`: notices committed by a worker
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
          const published = await publishNotices(deps, rows.map((r) => ({ id: Number(r.id), notice: r.payload as ChangeNotice })))
          deps.logger.info({ published }, 'outbox sweeper published left-over notices')
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
