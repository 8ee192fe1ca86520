import { eq } from 'drizzle-orm'
import type { Db } from '../../../core/db/client'
import { channelVersions } from '../../../core/db/schema'

/** A channel's read model together with the version and epoch it describes. */
export type ChannelSnapshot<T> = { version: number; epoch: string; data: T }

/**
 * Reads a channel's version and epoch and its data in one repeatable-read transaction, so the
 * version describes exactly this data: a subscriber applies notices with higher versions.
 */
export function readChannelSnapshot<T>(db: Db, channel: string, read: (q: Db) => Promise<T>): Promise<ChannelSnapshot<T>> {
  return db.transaction(
    async (tx) => {
      const q = tx as unknown as Db
      const [v] = await q
        .select({ version: channelVersions.version, epoch: channelVersions.epoch })
        .from(channelVersions)
        .where(eq(channelVersions.channel, channel))
      const data = await read(q)
      // A channel without a row has had no change: version 0 and no epoch yet ('').
      return { version: Number(v?.version ?? 0), epoch: v?.epoch ?? '', data }
    },
    { isolationLevel: 'repeatable read', accessMode: 'read only' },
  )
}
