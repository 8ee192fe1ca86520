import type { JetStreamManager } from '@nats-io/jetstream'
import { sql } from 'drizzle-orm'
import { rowsOf, type Db } from '../../../core/db/client'
import type { Logger } from '../../../core/logger'
import { streamIdentity } from '../../../core/nats'
import type { ProjectionName } from '../projections'
import { errorMessageOf, isTransientDbError, StaleReadError } from '../runtime/errors'
import { committedSwitch, lockDeadLetters, lockHistoryDeletes, lockLiveTables, recordSwitch, replaceDeadLetters, swapIn } from './shadow'
import type { ShadowBuild } from './shadow-build'

/** The switch waits at most this long for the shadow to reach the live checkpoints (locks held). */
const TAIL_DEADLINE_MS = 30_000

/** A NATS call of the switch failed (NATS restarting, the connection lost, the consumer gone). */
class NatsInterrupted extends Error {
  constructor(cause: unknown) {
    super(`NATS did not answer during the switch: ${errorMessageOf(cause)}`, { cause })
    this.name = 'NatsInterrupted'
  }
}

/** Runs a NATS call of the switch; its failure is a NatsInterrupted (the switch may be tried again). */
async function nats<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call()
  } catch (err) {
    throw new NatsInterrupted(err)
  }
}

/**
 * True for an error of the switch that passes: a NATS call failed (NATS restarting), a board's
 * rules changed under a tail batch, or a transient Postgres error (statement_timeout included).
 * The switch was rolled back and may be tried again.
 */
export const isSwitchInterrupted = (err: unknown) => err instanceof NatsInterrupted || err instanceof StaleReadError || isTransientDbError(err)

export type SwitchDeps = {
  db: Db
  jsm: JetStreamManager
  /** The event stream's name (its identity is compared with the one the build started from). */
  eventStream: string
  projection: ProjectionName
  partitions: number
  /** The live runners' batch size: the tail is fetched in such batches. */
  batchSize: number
  build: ShadowBuild
  /** `retired_<job id>_<attempt>`: where the live tables go; it exists once the switch committed. */
  retired: string
  logger: Logger
  /** Test seam (see RebuildHooks.beforeSwitchCommit). */
  beforeCommit?: () => Promise<void>
}

/**
 * The switch: one transaction that locks every live checkpoint of the projection (live runners
 * block on it), applies the shadow up to at least the highest live checkpoint, swaps the shadow
 * tables into public, gives the projection's channels their shadow versions under a new epoch,
 * replaces the live dead letters of the positions the shadow read by the shadow's, and moves
 * every live checkpoint to the shadow's position, so live runners skip exactly what the shadow
 * applied. Returns that position.
 *
 * A NATS call that fails in it throws NatsInterrupted; then, as after any error, nothing of it is
 * left (rolled back), and the build is as the tail left it: the caller rolls it back (see
 * ShadowBuild.rollBack). A switch of `retired` that committed already (its answer lost) is not
 * done again: its position is returned.
 */
export async function switchOnce(deps: SwitchDeps): Promise<number> {
  const { db, jsm, eventStream, build, retired, partitions, logger: log } = deps
  const name = deps.projection
  // No part started yet: a failure before the first is no part's (see runRebuild).
  build.parts.last = 0
  // NATS unreachable fails here, before the live tables are locked.
  await nats(() => streamIdentity(jsm, eventStream))
  return db.transaction(async (tx) => {
    // An earlier attempt of this switch committed though its answer was lost (a connection cut
    // at COMMIT): it must not switch again (the shadow's tables are live now).
    const committed = await committedSwitch(tx, retired)
    if (committed !== undefined) return committed
    // The job's fence first: a takeover since the catch-up rolls the switch back here, and one
    // that comes later waits for the switch to end, then finds it committed (see fence.ts). Every
    // name below is schema-qualified: the search_path points at the shadow from here on.
    await build.enter(tx)
    await lockHistoryDeletes(tx)
    await lockDeadLetters(tx, name)
    await lockLiveTables(tx, name)
    // Rows for every partition, so a partition no runner has written yet is also moved past
    // what the shadow applied (its first runner would otherwise start from 0 and apply twice).
    await tx.execute(sql`
      insert into public.projection_checkpoints (projection, partition, seq, fence)
      select ${name}, g, 0, 0 from generate_series(0, ${partitions - 1}::int) as g
      on conflict do nothing`)
    const rows = await rowsOf<{ seq: string | number; stream: string }>(
      tx,
      sql`select seq, stream from public.projection_checkpoints where projection = ${name} order by partition for update`,
    )
    // The stream recreated since the rebuild started (NATS lost its data): the shadow holds the
    // old stream's events, the live model also the new one's, and the checkpoints count in
    // different numberings. Switching would lose the new events; stop, and say so.
    const current = await nats(() => streamIdentity(jsm, eventStream))
    const elsewhere = rows.find((r) => r.stream !== '' && r.stream !== build.stream)?.stream
    if (current !== build.stream || elsewhere) {
      throw new Error(
        `the event stream was recreated during the rebuild (NATS lost its data?): it read ${build.stream}, the stream now is ${current}${elsewhere ? ` and live checkpoints count in ${elsewhere}` : ''}; nothing was switched`,
      )
    }
    const live = Math.max(0, ...rows.map((r) => Number(r.seq)))
    const deadline = Date.now() + TAIL_DEADLINE_MS
    while (build.position < live) {
      if (Date.now() > deadline) throw new Error(`shadow did not reach the live checkpoint ${live} (at ${build.position}) in time`)
      const batch = await nats(() => build.fetch(deps.batchSize, 1_000))
      if (batch.length > 0) {
        // Careful: a refusal here would abort the switch's transaction. In the sizes the
        // catch-up learned; a statement timeout rolls the switch back (see runRebuild).
        await build.apply(tx, batch, true)
        build.parts.last = 0
      } else if ((await nats(() => build.pending())) === 0) {
        // Nothing of this projection is stored between us and `live` (removed messages).
        break
      }
    }
    const at = Math.max(build.position, live)
    await swapIn(tx, { shadow: build.schema, retired, projection: name })
    await recordSwitch(tx, retired, at)
    await replaceDeadLetters(tx, { shadow: build.schema, projection: name, fromSeq: build.firstSeq, toSeq: at })
    // The model now comes from the current stream alone: nothing lost to a rebuild any more.
    await tx.execute(sql`update public.projection_checkpoints set seq = ${at}, lost_stream = '', updated_at = now() where projection = ${name}`)
    log.info({ live, switchedAt: at }, 'rebuilt model switched in')
    await deps.beforeCommit?.()
    return at
  })
}
