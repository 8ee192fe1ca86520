import { sql, type SQL } from 'drizzle-orm'
import type { ChangeRun } from './channels'

/**
 * The payload of a restart run (see ChangeRun.restart) as a SQL text expression, for a row of
 * `change_outbox`: the only builder of one, used by the board rules PUT (api, restartChannel) and
 * a rebuild's switch (stream-workers, swapIn), so the two cannot drift. SQL, not JSON made in JS:
 * the switch writes one run per channel of the projection in one statement, from the rows it
 * moves. `channel`, `epoch` and `version` are SQL expressions (columns of the rows inserted, or
 * parameters); `at` is the run's time.
 *
 * Every field of ChangeRun but `stored` (no event made the run) is listed, by type: a field
 * added to ChangeRun fails to compile here until the restart run says what it holds.
 */
export function restartRunPayload(run: { channel: SQL; epoch: SQL; version: SQL }, reason: string, at: Date): SQL {
  const fields: { [K in keyof Required<Omit<ChangeRun, 'stored'>>]: SQL } = {
    channel: sql`(${run.channel})::text`,
    version: sql`(${run.version})::bigint`,
    epoch: sql`(${run.epoch})::text`,
    changes: sql`json_build_array()`,
    at: sql`${at.toISOString()}::text`,
    restart: sql`${reason}::text`,
  }
  return sql`json_build_object(${sql.join(
    Object.entries(fields).map(([name, value]) => sql`${name}::text, ${value}`),
    sql`, `,
  )})::text`
}
