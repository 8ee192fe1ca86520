import { jetstreamManager } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import { sql } from 'drizzle-orm'
import type { Db } from '../../../../core/db/client'

/** `postgresRead`: only on a node with a read replica (DATABASE_READ_URL), which serves its snapshots and REST reads. */
export type Readiness = { postgres: boolean; nats: boolean; postgresRead?: boolean }

/** Resolves false when `p` rejects or takes longer than `ms`. */
async function within(ms: number, p: () => Promise<unknown>): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined
  const timeout = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), ms)))
  try {
    return await Promise.race([p().then(() => true, () => false), timeout])
  } finally {
    clearTimeout(timer)
  }
}

/**
 * Whether this node can serve: Postgres (and its read replica, when it has one) answers `select 1`,
 * and NATS answers a round trip and knows the event stream, each within `timeoutMs`.
 */
export async function checkReadiness(db: Db, nc: NatsConnection, eventStream: string, timeoutMs = 2000, readDb?: Db): Promise<Readiness> {
  const [postgres, nats, postgresRead] = await Promise.all([
    within(timeoutMs, () => db.execute(sql`select 1`)),
    within(timeoutMs, async () => {
      if (nc.isClosed()) throw new Error('closed')
      await nc.rtt()
      const jsm = await jetstreamManager(nc, { timeout: timeoutMs })
      await jsm.streams.info(eventStream)
    }),
    readDb ? within(timeoutMs, () => readDb.execute(sql`select 1`)) : undefined,
  ])
  return { postgres, nats, ...(postgresRead !== undefined ? { postgresRead } : {}) }
}
