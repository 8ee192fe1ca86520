import { sql } from 'drizzle-orm'
import { rowsOf, type Db, type Tx } from '../../../core/db/client'

/**
 * The Postgres side of a rebuild job's ownership. The job's claim lives in NATS KV (a
 * compare-and-set per claim, `attempts` counted up), but its writes go to Postgres, and a builder
 * that was only slow (a stalled process, a long pause) can still be writing after another worker
 * took its job over: the KV cannot stop a Postgres transaction already under way. So the job has a
 * row in `rebuild_fences` holding the attempt that may still write: each attempt raises it to its
 * own number when it starts, and every transaction of a rebuild (each catch-up fetch, the switch)
 * locks the row first and goes on only while it still holds its own attempt. A takeover's raise
 * waits for a transaction of the older attempt under way (its switch included), and once it is
 * committed the older attempt writes nothing more: exactly one attempt's switch can commit.
 */

/** The job was taken over: a later attempt holds its fence. Stop without writing; the job is the new owner's. */
export class RebuildTakenOver extends Error {
  constructor(job: { id: string; attempt: number }, fence: number | undefined) {
    super(`rebuild ${job.id} was taken over: attempt ${fence ?? '?'} holds it, this is attempt ${job.attempt}`)
    this.name = 'RebuildTakenOver'
  }
}

/**
 * Raises the fence of job `jobId` to `attempt` unless it is already higher; returns the fence now.
 * Waits for a transaction of an earlier attempt that holds the row (see holdFence). Called by each
 * attempt when it starts, and before an older attempt's shadow is dropped (with that attempt + 1).
 */
export async function raiseFence(db: Db, jobId: string, attempt: number): Promise<number> {
  const [row] = await rowsOf<{ attempt: number | string }>(
    db,
    sql`insert into public.rebuild_fences (job_id, attempt) values (${jobId}, ${attempt})
        on conflict (job_id) do update set attempt = greatest(rebuild_fences.attempt, excluded.attempt), updated_at = now()
        returning attempt`,
  )
  return Number(row.attempt)
}

/**
 * First in each transaction of a rebuild: locks the job's fence row until the transaction ends and
 * throws RebuildTakenOver unless it still holds `job.attempt`. Also refuses a shadow schema that is
 * gone: `search_path` skips a missing schema, and the projection code would write public's tables.
 */
export async function holdFence(tx: Tx, job: { id: string; attempt: number }, shadow: string): Promise<void> {
  const [row] = await rowsOf<{ attempt: number | string; present: boolean }>(
    tx,
    sql`select attempt, to_regnamespace(${shadow}) is not null as present from public.rebuild_fences where job_id = ${job.id} for update`,
  )
  if (!row || Number(row.attempt) !== job.attempt) throw new RebuildTakenOver(job, row ? Number(row.attempt) : undefined)
  if (!row.present) throw new Error(`the shadow schema ${shadow} of rebuild ${job.id} is gone, though attempt ${job.attempt} still holds the job`)
}
