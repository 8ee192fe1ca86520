import { sql, type SQL } from 'drizzle-orm'
import { every } from '../../../core/backoff'
import type { Config } from '../../../core/config'
import { rowsOf, type Db } from '../../../core/db/client'
import { changeHistory, channelVersions } from '../../../core/db/schema'
import { channelKinds } from '../../../core/channels'
import type { Logger } from '../../../core/logger'
import { historyRetention } from '../../../core/nats'

/**
 * One prune of change_history (FANFARE_LIVE_BATCHES): deletes the runs of a channel's earlier
 * epochs, the runs older than its kind's FANFARE_HISTORY_TTL_MS, and the runs that hold none of its
 * last FANFARE_HISTORY_SIZE versions (per kind, see historyRetention): a run goes once a later run
 * of its channel starts at or before the first version to keep, so the run holding that version is
 * kept, however many versions it holds. At most one process prunes at a time (a transaction-scoped
 * advisory lock; the others skip the round): two deletes over the same rows in different orders
 * could deadlock. Returns the rows deleted (0 when another process held the lock).
 */
export async function pruneHistory(db: Db, config: Config, now: Date): Promise<number> {
  const size = kindCase((kind) => historyRetention(config, kind).size)
  const ttlMs = kindCase((kind) => historyRetention(config, kind).ttlMs)
  return db.transaction(async (tx) => {
    const [lock] = await rowsOf<{ ok: boolean }>(tx, sql`select pg_try_advisory_xact_lock(hashtext('fanfare.change_history.prune')) as ok`)
    if (!lock?.ok) return 0
    const deleted = await rowsOf<{ n: number }>(
      tx,
      sql`with gone as (
        delete from ${changeHistory} h using ${channelVersions} v
        where h.channel = v.channel and (
          h.epoch <> v.epoch
          or h.created_at < ${now.toISOString()}::timestamptz - (${ttlMs.of(sql`h.channel`)} * interval '1 millisecond')
          or exists (
            select 1 from ${changeHistory} n
            where n.channel = h.channel and n.epoch = h.epoch and n.version > h.version
              and n.version <= v.version - ${size.of(sql`h.channel`)} + 1
          )
        )
        returning 1
      ) select count(*)::int as n from gone`,
    )
    return Number(deleted[0]?.n ?? 0)
  })
}

/** A per-kind value as SQL, chosen by a channel's kind (the text before its first `:`). */
function kindCase(value: (kind: (typeof channelKinds)[number]) => number): { of: (channel: SQL) => SQL } {
  return {
    of: (channel) =>
      sql`(case split_part(${channel}, ':', 1) ${sql.join(
        channelKinds.map((k) => sql`when ${k} then ${value(k)}::bigint`),
        sql` `,
      )} else ${value('leaderboard')}::bigint end)`,
  }
}

/** Prunes change_history every `intervalMs` (default 10 s) in the background; returns a stop function. */
export function startHistoryPruner(deps: { db: Db; config: Config; logger: Logger; intervalMs?: number; now?: () => Date }): { stop: () => Promise<void> } {
  return every(
    deps.intervalMs ?? 10_000,
    async () => {
      const n = await pruneHistory(deps.db, deps.config, deps.now?.() ?? new Date())
      if (n > 0) deps.logger.debug({ deleted: n }, 'pruned channel history')
    },
    (err) => deps.logger.warn({ err }, 'pruning channel history failed; retrying next round'),
  )
}
