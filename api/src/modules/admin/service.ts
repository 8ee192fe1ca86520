import type { KV } from '@nats-io/kv'
import type { NatsConnection } from '@nats-io/transport-node'
import { and, desc, eq, lt, not, or, sql } from 'drizzle-orm'
import type { Config } from '../../../../core/config'
import type { Db } from '../../../../core/db/client'
import { openLeaseBucketIfExists, workersView } from '../../../../core/leases'
import { deadLetters, leaderboards } from '../../../../core/db/schema'
import { Conflict, Unavailable } from '../../errors'
import { boardConfig, type BoardConfig } from '../leaderboards/service'
import type { BoardConfigBody, DeadLetter, ProjectionsReport, WorkersReport } from './model'
import { projectionStatus } from '../../../../core/projections'

/**
 * Upserts a board's rules (fields left out keep their value). Changing the order or operator of a
 * board that already has scores is 409 `board_has_scores`: existing scores were computed under the
 * old rules. One statement: the workers mark a board scored in the same row, in the statement that
 * writes its first entries (see the leaderboards projection), so the two cannot pass each other; an
 * upsert that meets a worker's row not yet committed waits for it, then sees it scored.
 */
export async function putBoardConfig(db: Db, board: string, body: BoardConfigBody): Promise<BoardConfig> {
  const l = leaderboards
  const order = body.order === undefined ? l.sortOrder : sql`${body.order}`
  const operator = body.operator === undefined ? l.operator : sql`${body.operator}`
  const reset = body.reset === undefined ? l.reset : sql`${body.reset}`
  const [row] = await db
    .insert(l)
    .values({ board, sortOrder: body.order, operator: body.operator, reset: body.reset, configured: true })
    .onConflictDoUpdate({
      target: l.board,
      set: { sortOrder: order, operator, reset, configured: true, updatedAt: new Date() },
      setWhere: or(not(l.hasScores), and(eq(l.sortOrder, order), eq(l.operator, operator), eq(l.reset, reset))),
    })
    .returning()
  if (row) return { board, order: row.sortOrder, operator: row.operator, reset: row.reset, configured: true }
  const current = await boardConfig(db, board)
  throw new Conflict('board_has_scores', `board ${board} already has scores; its order, operator and reset can no longer change`, {
    current: { order: current.order, operator: current.operator, reset: current.reset },
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
