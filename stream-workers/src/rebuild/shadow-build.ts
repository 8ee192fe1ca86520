import { DeliverPolicy, type Consumer, type JetStreamClient, type JetStreamManager, type JsMsg } from '@nats-io/jetstream'
import type { Config } from '../../../core/config'
import type { Db, Tx } from '../../../core/db/client'
import { claimOf } from '../../../core/projections'
import type { Logger } from '../../../core/logger'
import type { Metrics } from '../../../core/metrics'
import { streamIdentity, topology } from '../../../core/nats'
import type { Projection } from '../projections'
import { applyBatch, batchMessageOf, type BatchMessage } from '../runtime/batch'
import { applyOrOneByOne } from '../runtime/one-by-one'
import { dbErrorSummary } from '../runtime/errors'
import { createPartSize, type PartSize } from '../runtime/part-size'
import { holdFence } from './fence'
import { useShadow } from './shadow'

/** Where a shadow build is: its position in the stream and each partition's shadow checkpoint. */
export type ShadowMark = { position: number; checkpoints: ReadonlyMap<number, number> }

/**
 * A rebuild's shadow copy being built: reads the projection's events of the stream from its first
 * (an ordered consumer) and applies them to the shadow schema through the live runners' batch code.
 * It keeps its position (the last event applied) and the shadow's checkpoint per partition; what a
 * transaction applied is undone by the caller with `rollBack(mark)` when the transaction did not
 * commit, so the next fetch never reads past an event the shadow lacks.
 */
export type ShadowBuild = {
  /** The shadow schema (`rebuild_<job id>_<attempt>`). */
  readonly schema: string
  /** The event stream's identity when the build started: the shadow's checkpoints count in it. */
  readonly stream: string
  /** The stream's first sequence when the build started: where the shadow began reading. */
  readonly firstSeq: number
  /** The last event the shadow applied (0 before the first). */
  readonly position: number
  /** The part sizes learned from statement_timeout (see PartSize), and the parts of the current attempt. */
  readonly sizes: PartSize
  /**
   * `last`: the size of the shadow statement started last (the one that failed, when one did); 0
   * when no part started since the caller reset it. `done`: statements that went through since the
   * caller reset it.
   */
  readonly parts: { last: number; done: number }
  /**
   * First in each transaction of the build: holds the job's fence (throws RebuildTakenOver once a
   * later attempt took the job over, see holdFence), then the projection code reads and writes the
   * shadow.
   */
  enter(tx: Tx): Promise<void>
  /** Up to `max` messages after the position; opens the consumer there first if it has none. */
  fetch(max: number, expires: number): Promise<JsMsg[]>
  /** Messages of the projection still stored after the last one fetched (the consumer must be open). */
  pending(): Promise<number>
  /**
   * Applies `batch` to the shadow inside `tx` (entered), each partition's messages in parts (see
   * PartSize), and moves the position and checkpoints past it. Returns the parts' sizes, to report
   * to `sizes` as committed once `tx` is. `careful`: each statement in a savepoint and a message
   * Postgres refuses for its data a dead letter of the shadow, as live (applyOrOneByOne; the
   * refusal would abort the whole transaction otherwise). Not careful, a partition batch is one
   * statement and such a refusal fails the transaction: the caller applies the fetch again,
   * careful. Savepoints on every partition batch made the catch-up of 40,000 events ~25% slower
   * (bench/findings.md), so only a fetch that needs them pays.
   */
  apply(tx: Tx, batch: JsMsg[], careful: boolean): Promise<number[]>
  /** Where the build is now, to roll back to if the transaction that applies next does not commit. */
  mark(): ShadowMark
  /** Back to `mark`: what was applied since did not commit. */
  rollBack(mark: ShadowMark): void
  /**
   * Drops the consumer: it delivered what may not all be in the shadow (a failed fetch, a rolled
   * back transaction); the next fetch opens one after the position.
   */
  reopen(): void
}

export type ShadowBuildDeps = {
  config: Config
  js: JetStreamClient
  jsm: JetStreamManager
  logger: Logger
  projection: Projection
  now: () => Date
  metrics?: Metrics
}

/** Starts the build of `schema` (created, empty) for attempt `job.attempt` of job `job.id`, at the stream's first event. */
export async function openShadowBuild(deps: ShadowBuildDeps, schema: string, job: { id: string; attempt: number }): Promise<ShadowBuild> {
  const { projection, now, logger: log } = deps
  const { eventStream, prefix, partitions } = topology(deps.config)
  const { jsm } = deps
  // The shadow's checkpoints count in this incarnation of the event stream, like live ones.
  const stream = await streamIdentity(jsm, eventStream)
  // Where the shadow starts reading (DeliverPolicy.All): earlier messages are gone.
  const firstSeq = (await jsm.streams.info(eventStream)).state.first_seq
  // Ordered consumer: no server state to clean up, in order, resets itself on gaps. One filter
  // subject across partitions (nats-server 2.9). Opened again after the last event the shadow
  // applied when a fetch fails: the consumer lives in the server's memory, and a NATS restart
  // (routine) failed the rebuild with "consumer not found".
  const open = (after: number) =>
    deps.js.consumers.get(eventStream, {
      filter_subjects: `${prefix}.ev.*.${projection.area}.>`,
      ...(after > 0 ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: after + 1 } : { deliver_policy: DeliverPolicy.All }),
    })
  const checkpoints = new Map<number, number>()
  let position = 0
  // Opened lazily, after the last event the shadow applied (see reopen).
  let consumer: Consumer | undefined
  // As live, a statement too big for statement_timeout is split, and the size kept (see PartSize).
  const sizes = createPartSize(() => deps.metrics?.worker.timedOut(projection.name))
  const parts = { last: 0, done: 0 }

  return {
    schema,
    stream,
    firstSeq,
    get position() {
      return position
    },
    sizes,
    parts,
    enter: async (tx) => {
      await holdFence(tx, job, schema)
      await useShadow(tx, schema)
    },
    fetch: async (max, expires) => {
      consumer ??= await open(position)
      const out: JsMsg[] = []
      for await (const m of await consumer.fetch({ max_messages: max, expires })) out.push(m)
      return out
    },
    pending: async () => (await consumer!.info(false)).num_pending,
    apply: async (tx, batch, careful) => {
      const byPartition = new Map<number, BatchMessage[]>()
      for (const m of batch) {
        // What live runners consume and nothing else (the catch of unclaimed messages dead-letters
        // the rest): a `03` or a `7` of 4 partitions is no partition (Number() took `03` for 3).
        const claim = claimOf(m.subject, partitions)
        if (!claim) continue
        const p = claim.partition
        const list = byPartition.get(p) ?? []
        list.push(batchMessageOf(m))
        byPartition.set(p, list)
      }
      const at = now()
      const savepoint = <T>(run: (db: Db) => Promise<T>) => tx.transaction((sp) => run(sp as unknown as Db))
      // Same code as the live runners (decode, dead letters, checkpoint), token 0: never fenced.
      // The shadow's checkpoints start at 0 and only this rebuild writes them.
      const sizesDone: number[] = []
      for (const [partition, messages] of [...byPartition].sort(([a], [b]) => a - b)) {
        const owner = { projection, partition, token: 0, partitions, stream }
        for (let rest = messages; rest.length > 0; ) {
          const part = rest.slice(0, sizes.next(rest.length))
          parts.last = part.length
          const expected = checkpoints.get(partition) ?? 0
          const r = careful
            ? await applyOrOneByOne(tx as unknown as Db, owner, expected, part, () => at, {
                isolate: savepoint,
                onFallback: (err) => log.warn({ err: dbErrorSummary(err), partition, size: part.length, seq: part[0].seq }, 'Postgres refused a shadow batch for its data; applying its messages one by one'),
                onRefused: (m, _reason, err) => log.error({ err, subject: m.subject, seq: m.seq }, 'an event Postgres refuses for its data: dead-lettered in the shadow'),
              })
            : await applyBatch(tx, owner, expected, part, at)
          checkpoints.set(partition, r.checkpoint)
          sizesDone.push(part.length)
          parts.done++
          rest = rest.slice(part.length)
        }
      }
      if (batch.length > 0) position = batch[batch.length - 1].seq
      return sizesDone
    },
    mark: () => ({ position, checkpoints: new Map(checkpoints) }),
    rollBack: (mark) => {
      position = mark.position
      checkpoints.clear()
      for (const [partition, seq] of mark.checkpoints) checkpoints.set(partition, seq)
    },
    reopen: () => {
      consumer = undefined
    },
  }
}
