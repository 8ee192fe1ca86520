import type { KV } from '@nats-io/kv'
import type { NatsConnection } from '@nats-io/transport-node'
import { desc, eq, lt } from 'drizzle-orm'
import type { Config } from '../../../../core/config'
import type { Db } from '../../../../core/db/client'
import { openLeaseBucketIfExists, workersView } from '../../../../core/leases'
import { deadLetters, leaderboardEntries, leaderboards } from '../../../../core/db/schema'
import { Conflict, Unavailable } from '../../errors'
import { boardConfig, type BoardConfig } from '../leaderboards/service'
import type { BoardConfigBody, DeadLetter, ProjectionsReport, WorkersReport } from './model'
import { projectionStatus } from '../../../../core/projections'

/**
 * Upserts a board's rules. Changing the order or operator of a board that already has entries is
 * 409 `board_has_scores`: existing scores were computed under the old rules.
 */
export async function putBoardConfig(db: Db, board: string, body: BoardConfigBody): Promise<BoardConfig> {
  return db.transaction(async (tx) => {
    const q = tx as unknown as Db
    // Serialise concurrent admin writes to one board's config.
    await q.select().from(leaderboards).where(eq(leaderboards.board, board)).for('update')
    const current = await boardConfig(q, board)
    const next = { order: body.order ?? current.order, operator: body.operator ?? current.operator }
    const changes = next.order !== current.order || next.operator !== current.operator
    if (changes) {
      const [entry] = await q.select({ player: leaderboardEntries.player }).from(leaderboardEntries).where(eq(leaderboardEntries.board, board)).limit(1)
      if (entry) {
        throw new Conflict('board_has_scores', `board ${board} already has scores; its order and operator can no longer change`, {
          current: { order: current.order, operator: current.operator },
        })
      }
    }
    await q
      .insert(leaderboards)
      .values({ board, sortOrder: next.order, operator: next.operator })
      .onConflictDoUpdate({ target: leaderboards.board, set: { sortOrder: next.order, operator: next.operator, updatedAt: new Date() } })
    return { board, ...next, configured: true }
  })
}

/** Dead letters, newest first; `before` pages by id. */
export async function listDeadLetters(db: Db, opts: { limit: number; before?: number }): Promise<DeadLetter[]> {
  const rows = await db
    .select()
    .from(deadLetters)
    .where(opts.before !== undefined ? lt(deadLetters.id, opts.before) : undefined)
    .orderBy(desc(deadLetters.id))
    .limit(opts.limit)
  return rows.map((r) => ({ ...r, createdAt: r.createdAt.toISOString() }))
}

/** Projection progress with exact lag (see core/projections.ts); NATS trouble is 503. */
export async function readProjections(deps: { config: Config; db: Db; nc: NatsConnection }): Promise<ProjectionsReport> {
  try {
    return await projectionStatus(deps)
  } catch (err) {
    throw new Unavailable(`cannot read projection status: ${(err as Error).message}`)
  }
}


/**
 * Reads live workers from the lease bucket. The bucket is opened on first use, not at start: the
 * API may come up before any worker created it, and then the answer is an empty list (the bucket
 * is looked up again on the next call). NATS trouble is 503 `unavailable`.
 */
export function createWorkersReader(config: Config, nc: NatsConnection): () => Promise<WorkersReport> {
  let kv: KV | undefined
  return async () => {
    try {
      kv ??= await openLeaseBucketIfExists(nc, config)
      return { workers: kv ? await workersView(kv) : [], partitions: config.FANFARE_PARTITIONS }
    } catch (err) {
      // The bucket may have been deleted under us: look it up afresh next time.
      kv = undefined
      throw new Unavailable(`cannot read the lease bucket: ${(err as Error).message}`)
    }
  }
}
