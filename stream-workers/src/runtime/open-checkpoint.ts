import type { JetStreamManager } from '@nats-io/jetstream'
import { sql } from 'drizzle-orm'
import { rowsOf, type Db } from '../../../core/db/client'
import { projectionCheckpoints } from '../../../core/db/schema'
import type { Logger } from '../../../core/logger'
import { identityOf, incarnationOf, streamNameOf, UpgradeRequired } from '../../../core/nats'
import { StreamChanged } from './stream-check'

/**
 * Reads the checkpoint of `projection`/`partition` for reading the event stream `streamName` from
 * it, and records which incarnation of the stream it counts in: if the stream was recreated since
 * (its sequences restarted at 1), the checkpoint is reset to 0 so that the new stream's messages
 * are read, not skipped as already seen. (The old stream's events are gone with NATS' data; the
 * read models keep them, and `lost_stream` says so: a rebuild from the new stream alone would drop
 * them.) Returns the stream's identity (see streamIdentity), which the batches' guard checks, and
 * the checkpoint. The row must exist (claimFence made it).
 */
export async function openCheckpoint(
  deps: { db: Db; jsm: JetStreamManager; log: Logger },
  streamName: string,
  projection: string,
  partition: number,
): Promise<{ stream: string; checkpoint: number }> {
  const { db, log } = deps
  const info = await deps.jsm.streams.info(streamName)
  const stream = identityOf(info)
  if (incarnationOf(info.config.description) === undefined) {
    // A stream of an older version records no identity, and the `created` NATS reports may have
    // moved since the checkpoint was written (a restart after an update): taking it for a
    // recreated stream would apply every event again. Waits (retrying) for `npm run migrate`,
    // which records the identity the checkpoints hold.
    const [held] = await rowsOf<{ stream: string; seq: string | number }>(
      db,
      sql`select stream, seq from ${projectionCheckpoints} where projection = ${projection} and partition = ${partition}`,
    )
    if (held && Number(held.seq) > 0 && held.stream !== stream && streamNameOf(held.stream) === streamName) {
      throw new UpgradeRequired(`the event stream ${streamName} records no identity and NATS reports another (${stream}) than this partition's checkpoint holds (${held.stream})`)
    }
  }
  const [row] = await rowsOf<{ seq: string | number; previous: string; previous_seq: string | number }>(
    db,
    sql`with old as (
          select stream, seq from ${projectionCheckpoints}
          where projection = ${projection} and partition = ${partition} for update
        )
        update ${projectionCheckpoints} c
        set stream = ${stream}, seq = case when old.stream in ('', ${stream}) then c.seq else 0 end,
          lost_stream = case when old.stream in ('', ${stream}) or old.seq = 0 then c.lost_stream else old.stream end,
          unapplied_seq = case when old.stream in ('', ${stream}) then c.unapplied_seq end,
          unapplied_at = case when old.stream in ('', ${stream}) then c.unapplied_at end
        from old where c.projection = ${projection} and c.partition = ${partition}
          and (old.stream = '' or regexp_replace(old.stream, '@[^@]*$', '') = ${streamName})
        returning c.seq, old.stream as previous, old.seq as previous_seq`,
  )
  if (!row) {
    // A checkpoint of another stream name is not a recreated stream: another deployment (or this
    // one started with another FANFARE_STREAM) shares the database. Resetting it would apply
    // every event of the other stream again once it runs.
    const [other] = await rowsOf<{ stream: string }>(db, sql`select stream from ${projectionCheckpoints} where projection = ${projection} and partition = ${partition}`)
    if (other) throw new StreamChanged(streamName, [streamNameOf(other.stream)])
  }
  if (row && row.previous !== '' && row.previous !== stream) {
    log.error(
      { previousStream: row.previous, previousSeq: Number(row.previous_seq), stream },
      'the event stream was recreated (NATS lost its data?): applying the new stream from its start',
    )
  }
  return { stream, checkpoint: Number(row?.seq ?? 0) }
}
