import { getTableColumns, getTableName, sql, type SQL } from 'drizzle-orm'
import type { PgTable } from 'drizzle-orm/pg-core'

/**
 * Rows as a table expression bound as one parameter:
 * `jsonb_to_recordset($1::jsonb) AS <alias>(<column> <type>, ...)`.
 *
 * Bulk statements built this way bind one JSON text instead of a parameter per value, so building
 * them costs the same for 5 rows or 5,000 (drizzle's per-value query building was the workers'
 * largest CPU cost) and Postgres' 65,535-parameter limit never applies. Each row's keys are the
 * column names; `columns` maps them to SQL types and is code, never input.
 */
export function recordset(alias: string, columns: Record<string, string>, rows: readonly Record<string, unknown>[]): SQL {
  const definition = Object.entries(columns)
    .map(([name, type]) => `"${name}" ${type}`)
    .join(', ')
  // Bound as text, then cast: drivers that see a jsonb parameter would encode the string again.
  return sql`jsonb_to_recordset(${JSON.stringify(rows)}::text::jsonb) as ${sql.raw(`"${alias}"(${definition})`)}`
}

/**
 * `select * from <table>` for the given keys (the table's primary key columns), one index lookup
 * per key whatever the planner believes about the table. A plain `(k) in (select .. from
 * recordset)` was planned as a hash join over a sequential scan when the statistics predated a
 * burst of inserts (autovacuum analyzes about once a minute): every batch then read the whole
 * table, and Postgres' CPU grew with the table. LATERAL .. LIMIT 1 cannot be flattened into a
 * join, so each key is an index probe. Columns come back with their SQL names.
 *
 * `filterOnly` names key columns compared as `t.col || '' = k.col`, which no index can use: for a
 * table with a secondary index whose leading columns are key columns too (leaderboard_entries_rank
 * on (board, period) beside the key (board, player, period)), without statistics the planner
 * estimates one row through either index, so their costs tie and it may take the secondary one,
 * which walks every row of the board for each key. With `period` compared that way the secondary
 * index narrows by board alone (an estimated 1 row in 200) and the key by board and player: the key
 * wins by cost, not by a tie. A worker's prepared statement keeps the plan it got while the table
 * was small (until an analyze, never with autovacuum off): a tie lost then slowed that connection's
 * batches ~100x for the rest of the run (bench/findings.md, two worker processes).
 */
export function lookupByKey(table: PgTable, key: string[], keys: readonly Record<string, string>[], filterOnly: string[] = []): SQL {
  const columns = Object.fromEntries(key.map((k) => [k, 'text']))
  const match = key.map((k) => (filterOnly.includes(k) ? `t."${k}" || '' = k."${k}"` : `t."${k}" = k."${k}"`)).join(' and ')
  return sql`select t.* from ${recordset('k', columns, keys)}
    cross join lateral (select * from ${sql.raw(`"${getTableName(table)}"`)} t where ${sql.raw(match)} limit 1) t`
}

/**
 * The `set` of an upsert that takes these columns (by their property names) from the row it tried
 * to insert: `{ status: excluded."status", ... }`.
 */
export function fromExcluded<T extends PgTable>(table: T, ...props: (keyof T['_']['columns'] & string)[]): Record<string, SQL> {
  const columns = getTableColumns(table)
  return Object.fromEntries(props.map((p) => [p, sql.raw(`excluded.${JSON.stringify(columns[p].name)}`)]))
}
