import type { KV } from '@nats-io/kv'
import { RequestError, type NatsConnection } from '@nats-io/transport-node'
import { and, desc, eq, lt, not, or, sql } from 'drizzle-orm'
import type { Config } from '../../../../core/config'
import type { Db, Tx } from '../../../../core/db/client'
import { channelOf } from '../../../../core/channels'
import { restartRunPayload } from '../../../../core/restart-runs'
import { openLeaseBucketIfExists, workersView } from '../../../../core/leases'
import { changeOutbox, channelVersions, deadLetters, leaderboards } from '../../../../core/db/schema'
import { Conflict, databaseUnavailable, NotFound, Unavailable } from '../../errors'
import { replaySubject, type ReplayReply, type ReplayRequest } from '../../../../core/dead-letters'
import { boardConfig, type BoardConfig } from '../leaderboards/service'
import type { BoardConfigBody, DeadLetter, ProjectionsReport, WorkersReport } from './model'
import { projectionStatus } from '../../../../core/projections'
import { errorMessageOf } from '../../../../core/db/errors'

/**
 * Upserts a board's rules (fields left out keep their value). Changing the order or operator of a
 * board that already has scores is 409 `board_has_scores`: existing scores were computed under the
 * old rules. One statement: the workers mark a board scored in the same row, in the statement that
 * writes its first entries (see the leaderboards projection), so the two cannot pass each other; an
 * upsert that meets a worker's row not yet committed waits for it, then sees it scored.
 *
 * A board without scores may be watched already, and its subscribers' snapshots show the old
 * rules (order, period, when the period ends), which no update can change: the first scores would
 * carry a period their snapshot does not show, and be skipped for good. So in the same transaction
 * its channel starts a new history (restartChannel): every node re-syncs its subscribers.
 */
export async function putBoardConfig(db: Db, board: string, body: BoardConfigBody): Promise<BoardConfig> {
  const l = leaderboards
  const order = body.order === undefined ? l.sortOrder : sql`${body.order}`
  const operator = body.operator === undefined ? l.operator : sql`${body.operator}`
  const reset = body.reset === undefined ? l.reset : sql`${body.reset}`
  const row = await db.transaction(async (tx) => {
    const [upserted] = await tx
      .insert(l)
      .values({ board, sortOrder: body.order, operator: body.operator, reset: body.reset, configured: true })
      .onConflictDoUpdate({
        target: l.board,
        set: { sortOrder: order, operator, reset, configured: true, updatedAt: new Date() },
        setWhere: or(not(l.hasScores), and(eq(l.sortOrder, order), eq(l.operator, operator), eq(l.reset, reset))),
      })
      .returning()
    // Scored: the rules are the ones it had (else no row). Unscored, even rules re-stated as they
    // were restart it: a re-sync of an empty board costs little, and needs no compare that a
    // concurrent upsert could pass.
    if (upserted && !upserted.hasScores) await restartChannel(tx, channelOf.leaderboard(board), 'board rules changed')
    return upserted
  })
  if (row) return { board, order: row.sortOrder, operator: row.operator, reset: row.reset, configured: true }
  const current = await boardConfig(db, board)
  throw new Conflict('board_has_scores', `board ${board} already has scores; its order, operator and reset can no longer change`, {
    current: { order: current.order, operator: current.operator, reset: current.reset },
  })
}

/**
 * Starts a new history of `channel` (see ChangeRun.restart): a new epoch at the next version, and
 * a run that says so in the change outbox, which the workers' outbox sweeper publishes within a few
 * seconds (API nodes do not publish on change streams). Its row lock orders it with the workers'
 * batches that change the channel.
 */
async function restartChannel(tx: Tx, channel: string, reason: string): Promise<void> {
  const v = channelVersions
  const [started] = await tx
    .insert(v)
    .values({ channel, version: 1 })
    .onConflictDoUpdate({ target: v.channel, set: { version: sql`${v.version} + 1`, epoch: sql`default` } })
    .returning({ version: v.version, epoch: v.epoch })
  const payload = restartRunPayload({ channel: sql`${channel}`, epoch: sql`${started.epoch}`, version: sql`${started.version}` }, reason, new Date())
  await tx.insert(changeOutbox).values({ channel, epoch: started.epoch, version: started.version, payload })
}

/** Dead letters, newest first; `before` pages by id. */
export async function listDeadLetters(db: Db, opts: { limit: number; before?: number }): Promise<DeadLetter[]> {
  const rows = await db
    .select()
    .from(deadLetters)
    .where(opts.before !== undefined ? lt(deadLetters.id, opts.before) : undefined)
    .orderBy(desc(deadLetters.id))
    .limit(opts.limit)
  return rows.map(toDeadLetter)
}

/** How long a replay may take: the owner may be in the middle of a full batch. */
const REPLAY_TIMEOUT_MS = 15_000

// stored_at is the replay's business, not a documented field of the answer.
const toDeadLetter = ({ storedAt: _, ...r }: typeof deadLetters.$inferSelect): DeadLetter => ({ ...r, createdAt: r.createdAt.toISOString() })

/** One dead letter; 404 `unknown_dead_letter` when there is none with this id. */
export async function getDeadLetter(db: Db, id: number): Promise<DeadLetter> {
  const [row] = await db.select().from(deadLetters).where(eq(deadLetters.id, id))
  if (!row) throw new NotFound('unknown_dead_letter', `no dead letter ${id} (replayed or discarded already?)`)
  return toDeadLetter(row)
}

/**
 * Asks the worker that owns the dead letter's projection and partition to run it through the
 * projection again (see stream-workers/src/runtime/replay.ts): `replayed` (applied once and
 * deleted) or `still_failing` (kept, with the new reason). 404 when it is gone; 409
 * `rebuild_in_progress` while a rebuild of the projection has not switched in; 503 when no worker
 * holds the partition, or the owner could not do it now (nothing changed: try again).
 */
export async function replayDeadLetter(
  deps: { config: Config; db: Db; nc: NatsConnection },
  letter: DeadLetter,
  actor: string,
): Promise<Extract<ReplayReply, { outcome: 'replayed' | 'still_failing' }>> {
  const subject = replaySubject(deps.config.FANFARE_SUBJECT_PREFIX, letter.projection, letter.partition)
  let reply: ReplayReply
  try {
    const request: ReplayRequest = { id: letter.id, actor }
    const m = await deps.nc.request(subject, JSON.stringify(request), { timeout: REPLAY_TIMEOUT_MS })
    reply = m.json<ReplayReply>()
  } catch (err) {
    if (err instanceof RequestError && err.isNoResponders()) {
      throw new Unavailable(`no stream worker is running to replay dead letter ${letter.id} (${letter.projection}, partition ${letter.partition}); try again when one is`, 'no_worker')
    }
    throw new Unavailable(`the replay of dead letter ${letter.id} got no answer: ${(err as Error).message}`, 'replay_unavailable')
  }
  if (reply.outcome === 'not_found') throw new NotFound('unknown_dead_letter', `no dead letter ${letter.id} (replayed or discarded already?)`)
  if (reply.outcome === 'unavailable' && reply.code === 'rebuild_in_progress') {
    throw new Conflict('rebuild_in_progress', `dead letter ${letter.id} was not replayed: ${reply.message} (GET /admin/projections/${letter.projection}/rebuild says when: state done); if the rebuild still refuses the event, this dead letter stays, with the same id`, {
      projection: letter.projection,
    })
  }
  if (reply.outcome === 'unavailable') throw new Unavailable(`dead letter ${letter.id} could not be replayed now: ${reply.message}; nothing changed, try again`, 'replay_unavailable')
  return reply
}

/** Deletes a dead letter for good: what it held, or 404 `unknown_dead_letter`. */
export async function discardDeadLetter(db: Db | Tx, id: number): Promise<DeadLetter> {
  // Waits for a replay holding the row; finds nothing if that replay applied it.
  const [row] = await db.delete(deadLetters).where(eq(deadLetters.id, id)).returning()
  if (!row) throw new NotFound('unknown_dead_letter', `no dead letter ${id} (replayed or discarded already?)`)
  return toDeadLetter(row)
}

/**
 * Projection progress, with each partition's lag from the worker holding it (see
 * core/projections.ts; never consumer infos); NATS trouble is 503, Postgres down 503 `database_unavailable`.
 */
export async function readProjections(deps: { config: Config; db: Db; nc: NatsConnection }): Promise<ProjectionsReport> {
  try {
    return await projectionStatus(deps)
  } catch (err) {
    throw databaseUnavailable(err) ?? new Unavailable(`cannot read projection status: ${errorMessageOf(err)}`)
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
