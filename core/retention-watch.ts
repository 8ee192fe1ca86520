import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import { and, eq, isNull, lt, lte, or, sql } from 'drizzle-orm'
import { sleep } from './backoff'
import type { Config } from './config'
import { rowsOf, type Db } from './db/client'
import { projectionCheckpoints } from './db/schema'
import { subjects } from './events'
import type { Logger } from './logger'
import type { Metrics } from './metrics'
import { identityOf, nextBySubject, topology } from './nats'

/** A projection as the watch needs it: its checkpoint name and the event area it consumes. */
export type WatchedProjection = { name: string; area: string }

/** How often a partition past half the retention is warned about again. */
const WARN_EVERY_MS = 60_000

/**
 * Watches, while FANFARE_EVENT_RETENTION_MS is set, how old each projection's oldest unapplied
 * event is, so that lag is seen before retention deletes events nobody applied (promise 1). Every
 * `everyMs` (default an eighth of the retention, 250 ms to 10 s), per projection and partition, it
 * reads the first stored event on the partition's subjects after the checkpoint (a direct get,
 * `next_by_subj`), sets `fanfare_projection_oldest_unapplied_age_seconds`, warns past half the
 * retention, and records that event as the partition's witness (`unapplied_seq`) unless an older
 * one not yet applied is recorded. JetStream 2.9 keeps no trace of what max_age deleted, so the
 * witness is what lets a runner tell, later, that a deleted range held events of its partition
 * (see the runner's expiry check): a quiet partition never has one. Runs in API nodes and worker
 * processes alike, so the witness is taken while every worker is down. Does nothing when the
 * retention is 0 (forever).
 */
export function startRetentionWatch(deps: {
  config: Config
  db: Db
  nc: NatsConnection
  logger: Logger
  metrics: Metrics
  projections: readonly WatchedProjection[]
  everyMs?: number
  now?: () => number
}): { stop: () => Promise<void> } {
  const retentionMs = deps.config.FANFARE_EVENT_RETENTION_MS
  if (retentionMs === 0) return { stop: async () => {} }
  const t = topology(deps.config)
  const log = deps.logger.child({ component: 'retention' })
  const now = deps.now ?? Date.now
  const everyMs = deps.everyMs ?? Math.min(10_000, Math.max(250, Math.floor(retentionMs / 8)))
  const warned = new Map<string, number>()
  let jsm: JetStreamManager | undefined
  const halt = new AbortController()

  // Per projection and partition: no event of its subjects is stored from its checkpoint up to
  // (not including) this sequence. The stream only appends, so that stays true, and the next read
  // starts here: a partition that is caught up (or quiet while workers are down) costs a read of
  // what arrived since the last tick, not a scan from its checkpoint to the end of the stream
  // (6 ms a read on a 1M-message stream for a sparse area: bench/findings.md). Forgotten when the
  // stream is another incarnation (its identity, see identityOf).
  const absentBelow = new Map<string, number>()
  let incarnation = ''

  const sample = async () => {
    jsm ??= await jetstreamManager(deps.nc)
    const info = await jsm.streams.info(t.eventStream)
    // By the stream's identity, not `created`: nats-server 2.9 reports another `created` after a
    // restart (see streamIdentity), which emptied the cache for an intact stream.
    const identity = identityOf(info)
    if (identity !== incarnation) {
      absentBelow.clear()
      incarnation = identity
    }
    // Read before the direct gets: a get that finds nothing covered at least up to here.
    const lastSeq = info.state.last_seq
    const rows = await deps.db
      .select({ projection: projectionCheckpoints.projection, partition: projectionCheckpoints.partition, seq: projectionCheckpoints.seq })
      .from(projectionCheckpoints)
    const checkpoints = new Map(rows.map((r) => [`${r.projection}/${r.partition}`, Number(r.seq)]))
    for (const p of deps.projections) {
      for (let n = 0; n < t.partitions && !halt.signal.aborted; n++) {
        const seq = checkpoints.get(`${p.name}/${n}`)
        // No checkpoint row: no runner ever claimed the partition; nothing to record the witness on.
        if (seq === undefined) continue
        const key = `${p.name}/${n}`
        const from = Math.max(seq + 1, absentBelow.get(key) ?? 0)
        const oldest = await jsm.streams.getMessage(t.eventStream, nextBySubject(subjects.projectionFilter(t.prefix, n, p.area), from))
        if (!oldest) {
          absentBelow.set(key, lastSeq + 1)
          deps.metrics.worker.oldestUnapplied(p.name, n, 0)
          continue
        }
        absentBelow.set(key, oldest.seq)
        const ageMs = Math.max(0, now() - oldest.time.getTime())
        deps.metrics.worker.oldestUnapplied(p.name, n, ageMs / 1000)
        if (ageMs > retentionMs / 2 && now() - (warned.get(key) ?? 0) >= WARN_EVERY_MS) {
          warned.set(key, now())
          log.warn(
            { projection: p.name, partition: n, seq: oldest.seq, ageMs, retentionMs },
            'the oldest unapplied event of this partition is past half of FANFARE_EVENT_RETENTION_MS: if it is not applied in time, JetStream deletes it and it is lost to the read model',
          )
        }
        const c = projectionCheckpoints
        await deps.db
          .update(c)
          .set({ unappliedSeq: oldest.seq, unappliedAt: oldest.time })
          .where(and(eq(c.projection, p.name), eq(c.partition, n), lt(c.seq, oldest.seq), or(isNull(c.unappliedSeq), lte(c.unappliedSeq, c.seq))))
      }
    }
  }

  const done = (async () => {
    while (!halt.signal.aborted) {
      try {
        await sample()
      } catch (err) {
        if (!halt.signal.aborted) log.warn({ err }, 'retention watch: sampling failed; trying again')
      }
      await sleep(everyMs, halt.signal)
    }
  })()
  return {
    stop: async () => {
      halt.abort()
      await done
    },
  }
}

/**
 * What a runner does before applying a batch whose first delivery is stream sequence `first`
 * (while a retention is set): its consumer delivers every stored event of the partition after the
 * checkpoint in order, so a witness (see startRetentionWatch) above the checkpoint and below
 * `first` was stored and is gone: retention deleted it, and everything of the partition between
 * the checkpoint and `first`, before it was applied. Records the range on the checkpoint row
 * (`expired_from`/`expired_to`, shown by GET /admin/projections) and clears the witness, in one
 * statement that only the first finder wins; returns the range, or undefined.
 */
export async function takeExpiredRange(
  db: Db,
  projection: string,
  partition: number,
  first: number,
): Promise<{ fromSeq: number; toSeq: number; witnessSeq: number; witnessStoredAt: string | null } | undefined> {
  const c = projectionCheckpoints
  const [row] = await rowsOf<{ from_seq: string | number; to_seq: string | number; witness: string | number; stored_at: Date | string | null }>(
    db,
    // The row is locked only when it holds a witness in range: mostly it does not, and the check
    // costs one index lookup.
    sql`with old as (
          select unapplied_seq, unapplied_at from ${c}
          where projection = ${projection} and partition = ${partition} and unapplied_seq > seq and unapplied_seq < ${first}
          for update
        )
        update ${c} set expired_from = ${c}.seq + 1, expired_to = ${first - 1}, expired_at = now(), unapplied_seq = null, unapplied_at = null
        from old
        where ${c}.projection = ${projection} and ${c}.partition = ${partition}
        returning ${c}.expired_from as from_seq, ${c}.expired_to as to_seq, old.unapplied_seq as witness, old.unapplied_at as stored_at`,
  )
  if (!row) return undefined
  const storedAt = row.stored_at === null ? null : new Date(row.stored_at).toISOString()
  return { fromSeq: Number(row.from_seq), toSeq: Number(row.to_seq), witnessSeq: Number(row.witness), witnessStoredAt: storedAt }
}
