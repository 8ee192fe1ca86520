import type { NatsConnection } from '@nats-io/transport-node'

/**
 * The lag of the partitions' projections, as the workers that run them know it: GET
 * /admin/projections asks the workers over core NATS request/reply instead of asking nats-server
 * for consumer infos. On nats-server before 2.9.15 a consumer info (one per consumer in a listing)
 * made the server count a filtered consumer's pending messages again, and a count made while a
 * consumer with a backlog stood in the first half of what its subject had left in the stream's
 * last block made every later delivery scan that block up to the consumer: a partition then read
 * its backlog 20-50x slower (bench/findings.md, 2026-11-30, the filtered-pending count). The admin
 * console polls every 2 s, so watching a backlog drain made it crawl. A worker knows its lag from
 * its deliveries (each carries the consumer's pending count, which the server keeps anyway).
 */

/** `<prefix>.admin.lag`: every worker process answers (one subscription each) with the lag of each runner it has. */
export const lagSubject = (prefix: string) => `${prefix}.admin.lag`

/** One runner's lag, as its worker knows it. */
export type RunnerLag = {
  projection: string
  partition: number
  /** The consumer of the runner's ownership; null before it claimed its fence. */
  consumer: string | null
  /**
   * Events on the runner's subjects stored and not yet applied and acked, as of the runner's last
   * delivery: the events it holds (delivered, not yet acked) plus those its last delivery said were
   * stored behind it (or, before its first, those its consumer's creation counted). Events stored
   * since that delivery are not counted until delivered (at once for a runner waiting for events;
   * after the batch it applies otherwise). While a batch is stalled (Postgres not taking it) or its
   * consumer cannot be reopened: that value plus the events stored on its subjects since the stall
   * began (the stream's per-subject counts, no consumer info). Null before the consumer exists.
   */
  lag: number | null
  /** When `lag` was last set (the runner's last delivery, consumer creation or ack), ISO; null with lag null. */
  at: string | null
  /** What the runner is waiting for now, and since when (see RunnerStep); null once it stopped. */
  waiting: RunnerWaiting | null
}

/**
 * What a runner waits for: `consumer` its consumer to be (re)opened (the checkpoint read, the
 * consumer created); `pull` a first message (an idle partition is here, pull after pull, each at
 * most a few seconds); `rest` the rest of a batch after its first message; `apply` Postgres to apply
 * the batch (retries of a stalled batch included); `publish` the previous batch's change runs to be
 * acknowledged by JetStream; `backoff` the pause before it opens its consumer again after a reset.
 */
export type RunnerStep = 'consumer' | 'pull' | 'rest' | 'apply' | 'publish' | 'backoff'

/** A runner's current step and when it entered it (ISO). */
export type RunnerWaiting = { for: RunnerStep; since: string }

/** A worker's answer on lagSubject. */
export type LagReply = { worker: string; runners: RunnerLag[] }

/** How long GET /admin/projections waits for the workers holding partitions to answer. */
export const LAG_WAIT_MS = 1_000

/**
 * Asks every worker for its runners' lag (one request on lagSubject) and gathers the answers of
 * `workers` (the ids holding partitions, from the lease bucket): done when each has answered, or
 * after `timeoutMs`. A worker that does not answer in time (stopping, stuck, an older version) is
 * absent from the result. Never throws: a NATS fault is no answers.
 */
export async function askLags(nc: NatsConnection, prefix: string, workers: ReadonlySet<string>, timeoutMs = LAG_WAIT_MS): Promise<Map<string, LagReply>> {
  const replies = new Map<string, LagReply>()
  if (workers.size === 0) return replies
  try {
    // Every worker answers, holders or not; counting all answers would end early on others'.
    const answers = await nc.requestMany(lagSubject(prefix), '', { strategy: 'timer', maxWait: timeoutMs })
    for await (const m of answers) {
      let reply: LagReply
      try {
        reply = m.json<LagReply>()
      } catch {
        continue
      }
      if (typeof reply?.worker !== 'string' || !Array.isArray(reply.runners) || !workers.has(reply.worker)) continue
      replies.set(reply.worker, reply)
      if (replies.size === workers.size) break
    }
  } catch {
    // No responders (no worker running) or a lost connection: what came so far.
  }
  return replies
}
