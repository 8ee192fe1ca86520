import { sql, type SQL } from 'drizzle-orm'

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
