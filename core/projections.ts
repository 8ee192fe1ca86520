import { jetstreamManager } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import type { Config } from './config'
import type { Db } from './db/client'
import { count, eq } from 'drizzle-orm'
import { deadLetters, projectionCheckpoints } from './db/schema'
import { topology } from './nats'
import { consumerNames } from './consumer-names'
import { listPartitionOwners, openLeaseBucketIfExists } from './leases'
import { askLags, type RunnerWaiting } from './projection-lag'

/** Names of the read models the workers maintain; also the checkpoint's `projection` column. */
export const projectionNames = ['leaderboards', 'chat', 'streams', 'polls', 'reactions', 'matches'] as const
export type ProjectionName = (typeof projectionNames)[number]

/**
 * The event area (the type's part before the first dot) each projection consumes, for processes
 * that watch projections without running them (API nodes: see startRetentionWatch), and for the
 * workers' projections, which take theirs from here.
 */
export const projectionAreas: Record<ProjectionName, string> = { leaderboards: 'score', chat: 'chat', streams: 'stream', polls: 'poll', reactions: 'reaction', matches: 'match' }

/**
 * The projection, and its partition, whose consumer receives a message of the event stream, by
 * the message's subject: `<prefix>.ev.<partition>.<area>.<more>` with one of this deployment's
 * partitions, written as the runners' filters write it (`3`, never `03`), and a projection's area
 * (see subjects.projectionFilter). Undefined when no projection consumes the subject: JetStream
 * stores anything under `<prefix>.ev.>`, and such a message is the catch of unclaimed messages'
 * (see stream-workers/src/runtime/unclaimed.ts). The prefix has no dots (config pattern).
 */
export function claimOf(subject: string, partitions: number): { projection: ProjectionName; partition: number } | undefined {
  const tokens = subject.split('.')
  if (tokens.length < 5 || !/^(0|[1-9][0-9]{0,3})$/.test(tokens[2])) return undefined
  const partition = Number(tokens[2])
  const projection = areaProjections.get(tokens[3])
  return projection !== undefined && partition < partitions ? { projection, partition } : undefined
}
const areaProjections = new Map(projectionNames.map((p) => [projectionAreas[p], p]))

/**
 * The catch of messages no projection consumes (see claimOf): one per deployment, run by the
 * holder of partition 0's lease, its checkpoint and dead letters (partition 0) under this name.
 */
export const UNCLAIMED = 'unclaimed'

/** `<projection>_p<partition>_r<token>`: one durable consumer per ownership of a partition. */
export const consumerName = (projection: string, partition: number, token: number) => `${projection}_p${partition}_r${token}`

/** Parses a consumer name made by consumerName; undefined for any other consumer. */
export function parseConsumerName(name: string): { projection: string; partition: number; token: number } | undefined {
  const m = /^([a-z]+)_p(\d+)_r(\d+)$/.exec(name)
  return m ? { projection: m[1], partition: Number(m[2]), token: Number(m[3]) } : undefined
}

export type PartitionStatus = {
  partition: number
  /** Last applied stream sequence (0: nothing yet). */
  seq: number
  /** Fencing token of the ownership that last claimed or wrote the checkpoint. */
  fence: number
  updatedAt: string | null
  /** Consumer of the current ownership, null when no worker holds the partition. */
  consumer: string | null
  /**
   * Events of this projection and partition not yet applied and acked, as the worker holding the
   * partition knows it (see RunnerLag: as of its last delivery); null when no worker holds the
   * partition or its holder did not answer within LAG_WAIT_MS.
   */
  lag: number | null
  /**
   * What the runner of the worker holding the partition is waiting for, and since when (see
   * RunnerStep): a partition standing still says here which step it stands on. Null as `lag` is.
   */
  waiting: RunnerWaiting | null
  /**
   * When the oldest event seen stored and not yet applied was stored (see startRetentionWatch;
   * sampled only while FANFARE_EVENT_RETENTION_MS is set), null when none is known.
   */
  oldestUnappliedAt: string | null
  /**
   * The last range of stream sequences in which retention deleted events of this partition
   * before they were applied (at least one; lost to the read model), and when it was found; null: never.
   */
  expired: { fromSeq: number; toSeq: number; at: string } | null
}

/**
 * Where the catch of unclaimed messages is (see UNCLAIMED). Not a read model: nothing to rebuild,
 * no consumer, so no lag; it is listed beside the projections, not among them.
 */
export type UnclaimedStatus = {
  name: typeof UNCLAIMED
  /** It runs in the worker holding this partition's lease (see GET /admin/workers). */
  partition: 0
  /** Stream sequence of the last message it wrote as a dead letter (0: none yet); every stray at or below it is written. */
  seq: number
  /** Fencing token of the latest owner that claimed it (0: never started). */
  fence: number
  /**
   * When its checkpoint last moved (a dead letter written) or, before its first, when it first
   * started; null: never started. A look that finds nothing writes nothing, so when it last looked
   * is not known here.
   */
  updatedAt: string | null
  /** Its dead letters still held (neither replayed nor discarded). */
  deadLetters: number
}

export type ProjectionsStatus = {
  stream: { name: string; lastSeq: number; messages: number }
  unclaimed: UnclaimedStatus
  projections: {
    projection: ProjectionName
    /** Highest applied stream sequence over the partitions. */
    appliedSeq: number
    /** Sum of the partitions' lag; null when some partition's lag is unknown (no worker, or no answer). */
    lag: number | null
    partitions: PartitionStatus[]
  }[]
}

/**
 * Where each projection is, per partition. The lag of a partition is its holder's (the worker with
 * its lease, see core/leases.ts), asked over core NATS (askLags): as of that worker's last delivery,
 * not a count made now. nats-server is asked for no consumer info: on releases before 2.9.15 each
 * one (a listing answers one per consumer) made a consumer with a backlog read it 20-50x slower
 * (core/projection-lag.ts). The consumer of each ownership comes from the stream's consumer names
 * (no count); a partition that no worker holds, or whose holder does not answer, has lag null.
 */
export async function projectionStatus(deps: { config: Config; db: Db; nc: NatsConnection }): Promise<ProjectionsStatus> {
  const t = topology(deps.config)
  const jsm = await jetstreamManager(deps.nc)
  const info = await jsm.streams.info(t.eventStream)
  const newest = new Map<string, { name: string; token: number }>()
  for (const name of await consumerNames(deps.nc, jsm, t.eventStream)) {
    const parsed = parseConsumerName(name)
    if (!parsed) continue
    const key = `${parsed.projection}/${parsed.partition}`
    if ((newest.get(key)?.token ?? -1) < parsed.token) newest.set(key, { name, token: parsed.token })
  }
  // No lease bucket: no worker ever started, so no partition has a holder.
  const kv = await openLeaseBucketIfExists(deps.nc, deps.config)
  const owners = kv ? await listPartitionOwners(kv) : new Map<number, string>()
  const replies = await askLags(deps.nc, t.prefix, new Set(owners.values()))
  const lags = new Map<string, { lag: number | null; waiting: RunnerWaiting | null }>()
  for (const [partition, worker] of owners) {
    for (const r of replies.get(worker)?.runners ?? []) {
      if (r.partition === partition) lags.set(`${r.projection}/${partition}`, { lag: typeof r.lag === 'number' ? r.lag : null, waiting: r.waiting ?? null })
    }
  }
  const rows = await deps.db.select().from(projectionCheckpoints)
  const checkpoints = new Map(rows.map((r) => [`${r.projection}/${r.partition}`, r]))
  const [held] = await deps.db.select({ n: count() }).from(deadLetters).where(eq(deadLetters.projection, UNCLAIMED))
  const catchCp = checkpoints.get(`${UNCLAIMED}/0`)
  return {
    stream: { name: t.eventStream, lastSeq: info.state.last_seq, messages: info.state.messages },
    unclaimed: {
      name: UNCLAIMED,
      partition: 0,
      seq: Number(catchCp?.seq ?? 0),
      fence: Number(catchCp?.fence ?? 0),
      updatedAt: catchCp?.updatedAt.toISOString() ?? null,
      deadLetters: Number(held?.n ?? 0),
    },
    projections: projectionNames.map((projection) => {
      const partitions: PartitionStatus[] = []
      for (let n = 0; n < t.partitions; n++) {
        const cp = checkpoints.get(`${projection}/${n}`)
        const c = newest.get(`${projection}/${n}`)
        partitions.push({
          partition: n,
          seq: Number(cp?.seq ?? 0),
          fence: Number(cp?.fence ?? 0),
          updatedAt: cp?.updatedAt.toISOString() ?? null,
          consumer: c?.name ?? null,
          lag: lags.get(`${projection}/${n}`)?.lag ?? null,
          waiting: lags.get(`${projection}/${n}`)?.waiting ?? null,
          oldestUnappliedAt: cp?.unappliedSeq != null && cp.unappliedSeq > Number(cp.seq) && cp.unappliedAt ? cp.unappliedAt.toISOString() : null,
          expired:
            cp?.expiredFrom != null && cp.expiredTo != null && cp.expiredAt
              ? { fromSeq: Number(cp.expiredFrom), toSeq: Number(cp.expiredTo), at: cp.expiredAt.toISOString() }
              : null,
        })
      }
      const each = partitions.map((x) => x.lag)
      return {
        projection,
        appliedSeq: Math.max(0, ...partitions.map((x) => x.seq)),
        lag: each.every((l) => l !== null) ? each.reduce((a, b) => a! + b!, 0) : null,
        partitions,
      }
    }),
  }
}
