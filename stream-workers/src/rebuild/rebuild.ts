import { DeliverPolicy, type Consumer, type JetStreamClient, type JsMsg } from '@nats-io/jetstream'
import { sql } from 'drizzle-orm'
import type { Config } from '../../../core/config'
import { rowsOf, type Db, type Tx } from '../../../core/db/client'
import { subjects } from '../../../core/events'
import type { Logger } from '../../../core/logger'
import type { Projection } from '../projections'
import { applyBatch, batchMessageOf, type BatchMessage } from '../runtime/batch'
import { applyOrOneByOne } from '../runtime/one-by-one'
import { backoffMs, sleep } from '../../../core/backoff'
import { dbErrorSummary, errorMessageOf, isDataDbError, isTransientDbError, StaleReadError } from '../runtime/errors'
import { streamIdentity, topology } from '../../../core/nats'
import type { Metrics } from '../../../core/metrics'
import { createPartSize } from '../runtime/part-size'
import { committedSwitch, createShadow, dropSchemas, jobSwitch, leftoverSchemas, lockDeadLetters, lockLiveTables, recordSwitch, replaceDeadLetters, retiredSchemaName, shadowSchemaName, swapIn, useShadow } from './shadow'

export type RebuildDeps = {
  /** The event stream, subject prefix, partitions and batch size come from here (see topology). */
  config: Config
  db: Db
  js: JetStreamClient
  logger: Logger
  projection: Projection
  now?: () => Date
  /**
   * Called after each shadow batch, and once with state 'switching' just before the switch;
   * throwing stops the rebuild (the job was taken over by another worker).
   */
  progress: (p: { appliedSeq: number; pending: number; state?: 'switching' }) => Promise<void>
  signal: AbortSignal
  /** The process's metrics: the shadow's statement timeouts count with the live ones. */
  metrics?: Metrics
}

/** The switch waits at most this long for the shadow to reach the live checkpoints (locks held). */
const TAIL_DEADLINE_MS = 30_000

/**
 * Switches that fail in a row on something that passes (see runRebuild) before the job fails.
 * Each is rolled back, and followed by a backoff and a catch-up (which itself waits up to about a
 * minute for NATS): enough for a NATS or Postgres restart, not for a switch that never fits.
 */
const SWITCH_ATTEMPTS = 10

/** A NATS call of the switch failed (NATS restarting, the connection lost, the consumer gone). */
class NatsInterrupted extends Error {
  constructor(cause: unknown) {
    super(`NATS did not answer during the switch: ${errorMessageOf(cause)}`, { cause })
    this.name = 'NatsInterrupted'
  }
}

/** Runs a NATS call of the switch; its failure is a NatsInterrupted (the switch is tried again). */
async function nats<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call()
  } catch (err) {
    throw new NatsInterrupted(err)
  }
}

/**
 * Rebuilds one projection from the first event of the stream into a shadow schema while the live
 * runners go on, then switches in one transaction: lock every live checkpoint of the projection
 * (live runners block on it), apply the shadow up to at least the highest live checkpoint, swap
 * the shadow tables into public, give the projection's channels their shadow versions under a new
 * epoch, and move every live checkpoint to the shadow's position, so live runners skip exactly
 * what the shadow applied. Returns that position. Drops its shadow schema whatever happens.
 *
 * A switch that fails on something that passes (a NATS call in it failed: NATS restarting; a
 * transient Postgres error, statement_timeout included) is rolled back and tried again after a
 * backoff and a catch-up, up to SWITCH_ATTEMPTS in a row; a switch that committed though its
 * answer was lost is found (committedSwitch) and never done twice. Any other error fails at once.
 *
 * A switch of an earlier attempt of the job that committed (its worker died before the job was
 * saved done) is found first (jobSwitch): its position is returned, nothing rebuilt or switched.
 * The retired schema of a switch is left to the caller, to drop once the job is saved done.
 */
export async function runRebuild(deps: RebuildDeps, job: { id: string; attempt: number }): Promise<{ switchedAtSeq: number }> {
  const { db, projection } = deps
  const { eventStream, prefix, partitions } = topology(deps.config)
  const batchSize = deps.config.FANFARE_BATCH_SIZE
  const now = deps.now ?? (() => new Date())
  const log = deps.logger.child({ projection: projection.name, rebuild: job.id, attempt: job.attempt })
  const shadow = shadowSchemaName(job.id, job.attempt)
  const retired = retiredSchemaName(job.id, job.attempt)
  // An earlier attempt switched in, and its worker died before the job was saved done: the job is
  // done at that switch. Rebuilding would switch a second time (every channel re-synced twice).
  const earlier = await jobSwitch(db, job.id)
  if (earlier) {
    log.warn({ retired: earlier.retired, switchedAt: earlier.switchedAtSeq }, 'an earlier attempt of this rebuild switched in already; not rebuilding again')
    return { switchedAtSeq: earlier.switchedAtSeq }
  }
  // A takeover restarts from scratch; earlier attempts' schemas are garbage (none switched in).
  await dropSchemas(db, await leftoverSchemas(db, job.id, shadow))
  await createShadow(db, shadow, projection.name)
  let position = 0
  try {
    // Ordered consumer: no server state to clean up, in order, resets itself on gaps. One
    // filter subject across partitions (nats-server 2.9).
    // The shadow's checkpoints count in this incarnation of the event stream, like live ones.
    const jsm = await deps.js.jetstreamManager()
    const stream = await streamIdentity(jsm, eventStream)
    // Where the shadow starts reading (DeliverPolicy.All): earlier messages are gone.
    const firstSeq = (await jsm.streams.info(eventStream)).state.first_seq
    // Opened again after the last event the shadow applied when a fetch fails: the consumer lives
    // in the server's memory, and a NATS restart (routine) failed the rebuild with "consumer not found".
    const open = (after: number) =>
      deps.js.consumers.get(eventStream, {
        filter_subjects: `${prefix}.ev.*.${projection.area}.>`,
        ...(after > 0 ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: after + 1 } : { deliver_policy: DeliverPolicy.All }),
      })
    const shadowCheckpoints = new Map<number, number>()
    // As live, a statement too big for statement_timeout is split, and the size kept (see PartSize).
    const sizes = createPartSize(() => deps.metrics?.worker.timedOut(projection.name))
    // The size of the shadow statement started last: the one that failed, when one did; and how
    // many statements of the fetch's current attempt went through before it.
    let lastPart = 0
    let partsDone = 0
    /**
     * Applies a fetch to the shadow inside `tx`, each partition's messages in parts (see PartSize),
     * and returns the parts' sizes, to report as committed once `tx` is. `careful`: each statement
     * in a savepoint and a message Postgres refuses for its data a dead letter of the shadow, as live (applyOrOneByOne;
     * the refusal would abort the whole transaction otherwise). Not careful, a partition batch is
     * one statement and such a refusal fails the transaction: the catch-up applies the fetch again,
     * careful. Savepoints on every partition batch made the catch-up of 40,000 events ~25% slower
     * (bench/findings.md), so only a fetch that needs them pays.
     */
    const applyShadow = async (tx: Tx, batch: JsMsg[], careful: boolean) => {
      const byPartition = new Map<number, BatchMessage[]>()
      for (const m of batch) {
        const p = subjects.partitionOfSubject(m.subject)
        // Live runners only consume numbered partitions of this deployment: neither do we.
        if (!Number.isInteger(p) || p < 0 || p >= partitions) continue
        const list = byPartition.get(p) ?? []
        list.push(batchMessageOf(m))
        byPartition.set(p, list)
      }
      const at = now()
      const savepoint = <T>(run: (db: Db) => Promise<T>) => tx.transaction((sp) => run(sp as unknown as Db))
      // Same code as the live runners (decode, dead letters, checkpoint), token 0: never fenced.
      // The shadow's checkpoints start at 0 and only this rebuild writes them.
      const parts: number[] = []
      for (const [partition, messages] of [...byPartition].sort(([a], [b]) => a - b)) {
        const owner = { projection, partition, token: 0, partitions: partitions, stream }
        for (let rest = messages; rest.length > 0; ) {
          const part = rest.slice(0, sizes.next(rest.length))
          lastPart = part.length
          const expected = shadowCheckpoints.get(partition) ?? 0
          const r = careful
            ? await applyOrOneByOne(tx as unknown as Db, owner, expected, part, () => at, {
                isolate: savepoint,
                onFallback: (err) => log.warn({ err: dbErrorSummary(err), partition, size: part.length, seq: part[0].seq }, 'Postgres refused a shadow batch for its data; applying its messages one by one'),
                onRefused: (m, _reason, err) => log.error({ err, subject: m.subject, seq: m.seq }, 'an event Postgres refuses for its data: dead-lettered in the shadow'),
              })
            : await applyBatch(tx, owner, expected, part, at)
          shadowCheckpoints.set(partition, r.checkpoint)
          parts.push(part.length)
          partsDone++
          rest = rest.slice(part.length)
        }
      }
      return parts
    }
    // Opened lazily, after the last event the shadow applied: dropped (undefined) whenever what it
    // delivered may not all be in the shadow (a failed fetch, a switch rolled back), so the next
    // fetch reads on from `position` and never past an event the shadow lacks.
    let consumer: Consumer | undefined
    const fetch = async (max: number, expires: number) => {
      consumer ??= await open(position)
      const out: JsMsg[] = []
      for await (const m of await consumer.fetch({ max_messages: max, expires })) out.push(m)
      return out
    }

    // Catch up while live traffic continues, until what is left fits in about one live batch.
    // Bigger batches than the live runners': the per-statement cost dominates, and the shadow
    // must outrun live traffic to ever reach the switch.
    const catchUpBatch = Math.min(5_000, Math.max(batchSize, 1_000))
    const catchUp = async () => {
      for (let failures = 0; ; ) {
        if (deps.signal.aborted) throw new Error('rebuild stopped')
        let batch: JsMsg[]
        try {
          batch = await fetch(catchUpBatch, 1_000)
          failures = 0
        } catch (err) {
          // About a minute of failures in a row (NATS gone for good, the stream deleted): the job fails.
          if (failures >= 15) throw err
          log.warn({ err, position }, 'reading the event stream failed (NATS restarted?); reading again after the last event applied')
          await sleep(backoffMs(failures++), deps.signal)
          consumer = undefined
          continue
        }
        if (batch.length > 0) {
          const before = new Map(shadowCheckpoints)
          for (let attempt = 0, careful = false; ; ) {
            try {
              partsDone = 0
              const parts = await db.transaction(async (tx) => {
                await useShadow(tx, shadow)
                return applyShadow(tx, batch, careful)
              })
              // Only now: parts rolled back with a later one did not commit (a timeout after them
              // would otherwise never count twice in a row, and the fetch would never be split).
              for (const n of parts) sizes.committed(n)
              break
            } catch (err) {
              shadowCheckpoints.clear()
              for (const [partition, seq] of before) shadowCheckpoints.set(partition, seq)
              if (!careful && isDataDbError(err)) {
                // Postgres refused the data of a message of the fetch: the transaction wrote
                // nothing; apply the fetch again, careful (see applyShadow).
                log.warn({ err: dbErrorSummary(err) }, 'Postgres refused a shadow batch for its data; applying the fetch again, each statement in a savepoint')
                careful = true
                continue
              }
              // A board's rules changed under a batch that scores it first (see Applied.recheck), or
              // a deadlock or lost connection: the transaction wrote nothing; apply the batch again
              // from the same checkpoints.
              if (!(err instanceof StaleReadError) && !isTransientDbError(err)) throw err
              // Canceled for statement_timeout: the fetch's transaction wrote nothing, and it is
              // applied again from the same checkpoints, in smaller parts after a second cancel.
              const timeout = sizes.failed(err, lastPart)
              if (timeout === 'split') log.warn({ err, size: lastPart, nextSize: sizes.next(lastPart) }, 'a shadow statement outlasts statement_timeout; applying the fetch again in smaller parts')
              else if (timeout === 'alone') log.error({ err, size: lastPart }, 'one event alone outlasts statement_timeout: the rebuild is stalled until statement_timeout is raised or the database is faster; retrying it')
              else log.warn({ err, size: lastPart }, 'shadow batch not written; applying it again')
              // Statements of this attempt went through before the one that failed: the database is
              // moving (parts that fit), and the next attempt starts a fresh backoff, as a live
              // runner's next part does. Without it, the attempts at the sizes that fit waited up to
              // 5 s each, the backoff grown by the cancels that taught the size.
              if (partsDone > 0) attempt = 0
              await sleep(backoffMs(attempt++), deps.signal)
              if (deps.signal.aborted) throw new Error('rebuild stopped')
            }
          }
          position = batch[batch.length - 1].seq
        }
        const pending = batch.length > 0 ? batch[batch.length - 1].info.pending : 0
        await deps.progress({ appliedSeq: position, pending })
        if (pending < batchSize) return
      }
    }

    /**
     * The switch: one transaction that applies the shadow's tail and swaps it in (see runRebuild).
     * Returns the position the rebuilt model took over at. A NATS call that fails in it throws
     * NatsInterrupted; then, as after any error, nothing of it is left (rolled back).
     */
    const switchOnce = async (): Promise<number> => {
      // No part started yet: a failure before the first is no part's (see the retry below).
      lastPart = 0
      // NATS unreachable fails here, before the live tables are locked.
      await nats(() => streamIdentity(jsm, eventStream))
      return db.transaction(async (tx) => {
        // An earlier attempt of this switch committed though its answer was lost (a connection cut
        // at COMMIT): it must not switch again (the shadow's tables are live now).
        const committed = await committedSwitch(tx, retired)
        if (committed !== undefined) return committed
        const name = projection.name
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
        const elsewhere = rows.find((r) => r.stream !== '' && r.stream !== stream)?.stream
        if (current !== stream || elsewhere) {
          throw new Error(
            `the event stream was recreated during the rebuild (NATS lost its data?): it read ${stream}, the stream now is ${current}${elsewhere ? ` and live checkpoints count in ${elsewhere}` : ''}; nothing was switched`,
          )
        }
        const live = Math.max(0, ...rows.map((r) => Number(r.seq)))
        await useShadow(tx, shadow)
        const deadline = Date.now() + TAIL_DEADLINE_MS
        while (position < live) {
          if (Date.now() > deadline) throw new Error(`shadow did not reach the live checkpoint ${live} (at ${position}) in time`)
          const batch = await nats(() => fetch(batchSize, 1_000))
          if (batch.length > 0) {
            // Careful: a refusal here would abort the switch's transaction. In the sizes the
            // catch-up learned; a statement timeout rolls the switch back (see below).
            await applyShadow(tx, batch, true)
            lastPart = 0
            position = batch[batch.length - 1].seq
          } else if ((await nats(() => consumer!.info(false))).num_pending === 0) {
            // Nothing of this projection is stored between us and `live` (removed messages).
            break
          }
        }
        const at = Math.max(position, live)
        await swapIn(tx, { shadow, retired, projection: name })
        await recordSwitch(tx, retired, at)
        await replaceDeadLetters(tx, { shadow, projection: name, fromSeq: firstSeq, toSeq: at })
        // The model now comes from the current stream alone: nothing lost to a rebuild any more.
        await tx.execute(sql`update public.projection_checkpoints set seq = ${at}, lost_stream = '', updated_at = now() where projection = ${name}`)
        log.info({ live, switchedAt: at }, 'rebuilt model switched in')
        return at
      })
    }

    // What Postgres says once it answers again (a few tries); still unanswered, `err` fails the job.
    const untilAnswered = async <T>(read: () => Promise<T>, err: unknown): Promise<T> => {
      for (let attempt = 0; ; attempt++) {
        try {
          return await read()
        } catch {
          if (attempt >= 10 || deps.signal.aborted) throw err
          await sleep(backoffMs(attempt), deps.signal)
        }
      }
    }
    // A switch that fails on something that passes (NATS restarting, statement_timeout, a lost
    // connection, a deadlock) is rolled back, live untouched and its locks released, and tried
    // again after a backoff and a catch-up (live went on meanwhile): a routine NATS restart no
    // longer costs the rebuild. Anything else fails the job at once, as do SWITCH_ATTEMPTS in a row.
    let switchedAt = 0
    for (let failures = 0; ; ) {
      await catchUp()
      await deps.progress({ appliedSeq: position, pending: 0, state: 'switching' })
      if (deps.signal.aborted) throw new Error('rebuild stopped')
      const before = { position, checkpoints: new Map(shadowCheckpoints) }
      try {
        switchedAt = await switchOnce()
        break
      } catch (err) {
        // The tail the switch applied was rolled back with it: the shadow is where it was, and the
        // consumer past it.
        position = before.position
        shadowCheckpoints.clear()
        for (const [partition, seq] of before.checkpoints) shadowCheckpoints.set(partition, seq)
        consumer = undefined
        if (lastPart > 0 && sizes.failed(err, lastPart) === 'split') log.warn({ err, size: lastPart, nextSize: sizes.next(lastPart) }, 'a shadow statement of the switch outlasts statement_timeout; smaller parts from now on')
        const transient = err instanceof NatsInterrupted || err instanceof StaleReadError || isTransientDbError(err)
        if (!transient) throw err
        // Before a catch-up writes the shadow again: did the switch commit all the same (its
        // answer lost)? The shadow's tables would be live ones now.
        const committed = await untilAnswered(() => committedSwitch(db, retired), err)
        if (committed !== undefined) {
          log.warn({ err, switchedAt: committed }, 'the switch committed though its answer was lost')
          switchedAt = committed
          break
        }
        if (++failures >= SWITCH_ATTEMPTS) throw err
        log.warn({ err, failures }, 'the switch failed and was rolled back (live untouched); trying it again')
        await sleep(backoffMs(failures), deps.signal)
      }
    }
    return { switchedAtSeq: switchedAt }
  } finally {
    // The retired schema (it exists only if the switch committed) stays until the job is saved
    // done (see startRebuildJobs): a takeover before that recognises the switch by it.
    await dropSchemas(db, [shadow]).catch((err) => log.warn({ err }, 'could not drop rebuild schemas'))
  }
}
