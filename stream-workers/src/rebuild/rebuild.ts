import { DeliverPolicy, type JetStreamClient, type JsMsg } from '@nats-io/jetstream'
import { sql } from 'drizzle-orm'
import type { Config } from '../../../core/config'
import { rowsOf, type Db, type Tx } from '../../../core/db/client'
import { subjects } from '../../../core/events'
import type { Logger } from '../../../core/logger'
import type { Projection } from '../projections'
import { applyBatch, batchMessageOf, type BatchMessage } from '../runtime/batch'
import { applyOrOneByOne } from '../runtime/one-by-one'
import { backoffMs, sleep } from '../../../core/backoff'
import { dbErrorSummary, isDataDbError, isTransientDbError, StaleReadError } from '../runtime/errors'
import { streamIdentity, topology } from '../../../core/nats'
import type { Metrics } from '../../../core/metrics'
import { createPartSize } from '../runtime/part-size'
import { createShadow, dropSchemas, leftoverSchemas, lockDeadLetters, lockLiveTables, replaceDeadLetters, shadowSchemaName, swapIn, useShadow } from './shadow'

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
 * Rebuilds one projection from the first event of the stream into a shadow schema while the live
 * runners go on, then switches in one transaction: lock every live checkpoint of the projection
 * (live runners block on it), apply the shadow up to at least the highest live checkpoint, swap
 * the shadow tables into public, give the projection's channels their shadow versions under a new
 * epoch, and move every live checkpoint to the shadow's position, so live runners skip exactly
 * what the shadow applied. Returns that position. Cleans up its schemas whatever happens.
 */
export async function runRebuild(deps: RebuildDeps, job: { id: string; attempt: number }): Promise<{ switchedAtSeq: number }> {
  const { db, projection } = deps
  const { eventStream, prefix, partitions } = topology(deps.config)
  const batchSize = deps.config.FANFARE_BATCH_SIZE
  const now = deps.now ?? (() => new Date())
  const log = deps.logger.child({ projection: projection.name, rebuild: job.id, attempt: job.attempt })
  const shadow = shadowSchemaName(job.id, job.attempt)
  const retired = `retired_${job.id}_${job.attempt}`
  // A takeover restarts from scratch; earlier attempts' schemas are garbage.
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
    let consumer = await open(0)
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
    const fetch = async (max: number, expires: number) => {
      const out: JsMsg[] = []
      for await (const m of await consumer.fetch({ max_messages: max, expires })) out.push(m)
      return out
    }

    // Catch up while live traffic continues, until what is left fits in about one live batch.
    // Bigger batches than the live runners': the per-statement cost dominates, and the shadow
    // must outrun live traffic to ever reach the switch.
    const catchUpBatch = Math.min(5_000, Math.max(batchSize, 1_000))
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
        consumer = await open(position).catch(() => consumer)
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
            // from the same checkpoints. (The same in the switch's few batches fails the rebuild:
            // visible, and it can be requested again.)
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
      if (pending < batchSize) break
    }

    await deps.progress({ appliedSeq: position, pending: 0, state: 'switching' })
    if (deps.signal.aborted) throw new Error('rebuild stopped')
    let switchedAt = 0
    await db.transaction(async (tx) => {
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
      const current = await streamIdentity(jsm, eventStream)
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
        const batch = await fetch(batchSize, 1_000)
        if (batch.length > 0) {
          // Careful: a refusal here would abort the switch's transaction (and fail the job).
          // In the sizes the catch-up learned; a statement timeout here fails the job (visible,
          // request it again) rather than retrying while the live tables are locked.
          await applyShadow(tx, batch, true)
          position = batch[batch.length - 1].seq
        } else if ((await consumer.info(false)).num_pending === 0) {
          // Nothing of this projection is stored between us and `live` (removed messages).
          break
        }
      }
      switchedAt = Math.max(position, live)
      await swapIn(tx, { shadow, retired, projection: name })
      await replaceDeadLetters(tx, { shadow, projection: name, fromSeq: firstSeq, toSeq: switchedAt })
      // The model now comes from the current stream alone: nothing lost to a rebuild any more.
      await tx.execute(sql`update public.projection_checkpoints set seq = ${switchedAt}, lost_stream = '', updated_at = now() where projection = ${name}`)
      log.info({ live, switchedAt }, 'rebuilt model switched in')
    })
    return { switchedAtSeq: switchedAt }
  } finally {
    await dropSchemas(db, [shadow, retired]).catch((err) => log.warn({ err }, 'could not drop rebuild schemas'))
  }
}
