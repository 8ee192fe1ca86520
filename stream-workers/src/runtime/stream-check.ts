import { sql } from 'drizzle-orm'
import { rowsOf, type Db } from '../../../core/db/client'

/**
 * Thrown when the database's checkpoints count positions in another event stream than
 * FANFARE_STREAM: the workers were started with another stream name by mistake, or two deployments
 * share one database. Taken for a recreated stream, the checkpoints would be reset to 0, and once
 * the right stream is back every event it holds would be applied a second time.
 */
export class StreamChanged extends Error {
  constructor(stream: string, others: string[]) {
    super(
      `the database's projection checkpoints are positions in event stream ${others.join(', ')}, not FANFARE_STREAM=${stream}: ` +
        `set FANFARE_STREAM (and FANFARE_SUBJECT_PREFIX) to the deployment's on every process; a second deployment needs its own database`,
    )
    this.name = 'StreamChanged'
  }
}

/** Refuses to start workers on a database whose checkpoints belong to another event stream. */
export async function checkCheckpointStream(db: Db, stream: string): Promise<void> {
  const rows = await rowsOf<{ name: string }>(
    db,
    sql`select distinct regexp_replace(stream, '@[^@]*$', '') as name from projection_checkpoints where stream <> '' order by 1`,
  )
  const others = rows.map((r) => r.name).filter((n) => n !== stream)
  if (others.length > 0) throw new StreamChanged(stream, others)
}
