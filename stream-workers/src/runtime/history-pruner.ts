import { sql, type SQL } from 'drizzle-orm'
import { every } from '../../../core/backoff'
import type { Config } from '../../../core/config'
import { rowsOf, type Db, type Tx } from '../../../core/db/client'
import { changeHistory, channelVersions } from '../../../core/db/schema'
import { channelKinds } from '../../../core/channels'
import type { Logger } from '../../../core/logger'
import { historyRetention } from '../../../core/nats'

/**
 * Which rows of change_history a prune looks at besides every row (the default): the rows of
 * `channels` (those the batches wrote since the last round: only a write makes a channel's older
 * runs superfluous), and the rows that crossed their kind's FANFARE_HISTORY_TTL_MS since `since`
 * (the previous round), read by the index on `created_at`.
 */
export type PruneScope = { channels: readonly string[]; since: Date }

/**
 * A batch's rows carry the `now` it was prepared at, and it may commit later (a group commit, a
 * retried statement): a scoped round looks this much further back for rows that crossed their TTL,
 * so a row that was not yet visible in the round it expired in is seen in a later one.
 */
export const LATE_MS = 60_000

/**
 * The transaction-scoped advisory lock every delete of change_history rows holds first: a prune
 * round (which skips when it is held) and a rebuild's switch (which waits for it, see swapIn). Two
 * deletes over the same rows in different orders could deadlock. The key is the one pruners have
 * always taken, so processes of an earlier version still exclude these.
 */
export const HISTORY_DELETE_LOCK_KEY = 'fanfare.change_history.prune'
export const historyDeleteLock = sql`hashtext(${HISTORY_DELETE_LOCK_KEY})`

/**
 * One prune of change_history (live batches): deletes the runs of a channel's earlier
 * epochs, the runs older than its kind's FANFARE_HISTORY_TTL_MS, and the runs that hold none of its
 * last FANFARE_HISTORY_SIZE versions (per kind, see historyRetention): a run goes once a later run
 * of its channel starts at or before the first version to keep, so the run holding that version is
 * kept, however many versions it holds. Without `scope` every row is looked at; with it, only those
 * it names (see PruneScope), through indexes. At most one process prunes at a time (a
 * transaction-scoped advisory lock; the others skip the round): two deletes over the same rows in
 * different orders could deadlock. Returns the rows deleted (0 when another process held the lock).
 */
export async function pruneHistory(db: Db, config: Config, now: Date, scope?: PruneScope): Promise<number> {
  return (await pruneRound(db, config, now, scope)) ?? 0
}

/** pruneHistory; undefined when another process held the lock (the round looked at nothing). */
async function pruneRound(db: Db, config: Config, now: Date, scope?: PruneScope): Promise<number | undefined> {
  const size = kindCase((kind) => historyRetention(config, kind).size)
  const ttlMs = kindCase((kind) => historyRetention(config, kind).ttlMs)
  const prunable = sql`(
    h.epoch <> v.epoch
    or h.created_at < ${now.toISOString()}::timestamptz - (${ttlMs.of(sql`h.channel`)} * interval '1 millisecond')
    or exists (
      select 1 from ${changeHistory} n
      where n.channel = h.channel and n.epoch = h.epoch and n.version > h.version
        and n.version <= v.version - ${size.of(sql`h.channel`)} + 1
    )
  )`
  const prune = async (tx: Tx, rows: SQL) => {
    const deleted = await rowsOf<{ n: number }>(
      tx,
      sql`with gone as (
        delete from ${changeHistory} h using ${channelVersions} v
        where h.channel = v.channel and ${rows} and ${prunable}
        returning 1
      ) select count(*)::int as n from gone`,
    )
    return Number(deleted[0]?.n ?? 0)
  }
  return db.transaction(async (tx) => {
    const [lock] = await rowsOf<{ ok: boolean }>(tx, sql`select pg_try_advisory_xact_lock(${historyDeleteLock}) as ok`)
    if (!lock?.ok) return undefined
    if (!scope) return (await prune(tx, sql`true`)) + (await pruneOrphans(tx))
    let n = 0
    if (scope.channels.length > 0) {
      // One bound JSON text, not a parameter per channel. `= any(array(...))` on both tables is a
      // condition on their keys' leading column, whatever the statistics say; each condition below
      // narrows a channel's rows to a range of the key: its runs before the first version to keep
      // (only those can hold none of the versions kept), and its runs of earlier and of later epochs.
      const channels = sql`array(select jsonb_array_elements_text(${JSON.stringify(scope.channels)}::text::jsonb))`
      const touched = sql`h.channel = any(${channels}) and v.channel = any(${channels})`
      for (const range of [sql`h.epoch = v.epoch and h.version < v.version - ${size.of(sql`v.channel`)} + 1`, sql`h.epoch < v.epoch`, sql`h.epoch > v.epoch`]) {
        n += await prune(tx, sql`${touched} and ${range}`)
      }
    }
    // Per TTL in use, the rows whose age passed it since the last round: a range of the index on
    // created_at each (the kind's own TTL is checked by `prunable`).
    const ttls = [...new Set(channelKinds.map((k) => historyRetention(config, k).ttlMs))]
    const at = (ms: number) => sql`${new Date(ms).toISOString()}::timestamptz`
    const crossed = sql.join(
      ttls.map((ttl) => sql`(h.created_at >= ${at(scope.since.getTime() - ttl - LATE_MS)} and h.created_at < ${at(now.getTime() - ttl)})`),
      sql` or `,
    )
    n += await prune(tx, sql`(${crossed})`)
    return n
  })
}

/**
 * Deletes the runs of channels that have no channel_versions row, which `prune` never reaches (it
 * joins the row) and no API node serves (it reads a channel's epochs against its snapshot's:
 * version 0, no epoch). A backstop: a rebuild's switch, which drops the row of a channel its
 * rebuilt model never changed, deletes that channel's runs itself (shadow.ts swapIn); what is left
 * for this is such runs from a switch of an earlier version, which did not. A batch writes a
 * channel's runs and its row in one statement, so a run without a row is never a new one.
 */
async function pruneOrphans(tx: Tx): Promise<number> {
  const deleted = await rowsOf<{ n: number }>(
    tx,
    sql`with gone as (
      delete from ${changeHistory} h
      where not exists (select 1 from ${channelVersions} v where v.channel = h.channel)
      returning 1
    ) select count(*)::int as n from gone`,
  )
  return Number(deleted[0]?.n ?? 0)
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

/**
 * The channels this process's batches wrote to change_history since its pruner last pruned them:
 * the runners `add` what they committed, the pruner `take`s them for a round and puts them back
 * when the round did not run (another process held the lock, Postgres failed).
 */
export type HistoryTouches = {
  add(runs: readonly { channel: string }[]): void
  take(): string[]
  putBack(channels: readonly string[]): void
}

export function historyTouches(): HistoryTouches {
  let channels = new Set<string>()
  return {
    add(runs) {
      for (const r of runs) channels.add(r.channel)
    },
    take() {
      const out = [...channels]
      channels = new Set()
      return out
    },
    putBack(list) {
      for (const c of list) channels.add(c)
    },
  }
}

/**
 * A full round (every row) at a pruner's first round, and then this often. Between them a round
 * looks only at the channels written and the rows past their TTL (see PruneScope). What only a
 * full round deletes: rows a worker that stopped without pruning had written (its touched channels
 * are lost with it), and, as a backstop, what a rebuild's switch of an earlier version left: the
 * earlier epoch's runs of a channel it switched and nothing wrote since (API nodes read only a
 * channel's current epoch from them), and the runs of a channel whose row it dropped (see
 * pruneOrphans). A switch now deletes both itself (shadow.ts swapIn).
 */
export const FULL_EVERY_MS = 3600_000

/**
 * Prunes change_history every `intervalMs` (default 10 s) in the background: the channels in
 * `touched` and the rows past their TTL, and every row at the first round and every FULL_EVERY_MS.
 * Returns a stop function.
 */
export function startHistoryPruner(deps: { db: Db; config: Config; logger: Logger; touched: HistoryTouches; intervalMs?: number; now?: () => Date }): {
  stop: () => Promise<void>
} {
  // The start of the last round that ran, and of the last full one.
  let since: Date | undefined
  let fullAt = 0
  return every(
    deps.intervalMs ?? 10_000,
    async () => {
      const now = deps.now?.() ?? new Date()
      const full = since === undefined || now.getTime() - fullAt >= FULL_EVERY_MS
      const channels = deps.touched.take()
      let n: number | undefined
      try {
        n = await pruneRound(deps.db, deps.config, now, full ? undefined : { channels, since: since! })
      } finally {
        if (n === undefined) deps.touched.putBack(channels)
      }
      if (n === undefined) return
      since = now
      if (full) fullAt = now.getTime()
      if (n > 0) deps.logger.debug({ deleted: n, full }, 'pruned channel history')
    },
    (err) => deps.logger.warn({ err }, 'pruning channel history failed; retrying next round'),
  )
}
