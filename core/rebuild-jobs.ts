import { Kvm, type KV } from '@nats-io/kv'
import type { NatsConnection } from '@nats-io/transport-node'
import type { Config } from './config'
import { topology } from './nats'
import { projectionNames, type ProjectionName } from './projections'

/**
 * Projection rebuild jobs, shared by the API (which requests them and shows them) and the stream
 * workers (which claim and run them). One key per projection in the bucket `<stream>_jobs`:
 * `rebuild.<projection>` holds a RebuildJob. Every state change is a compare-and-set on the key's
 * revision, so exactly one writer wins each step (request, claim, heartbeat, finish).
 */

/** Every projection can be rebuilt (see projectionNames). */
export const isRebuildable = (name: string): name is ProjectionName => (projectionNames as readonly string[]).includes(name)

/**
 * requested: waiting for a worker; running: building the shadow copy; switching: swapping it in;
 * done / failed: finished (a new request may replace the key).
 */
export type RebuildState = 'requested' | 'running' | 'switching' | 'done' | 'failed'

/** True while a job still has to run or is running: a second request is refused. */
export const isActive = (state: RebuildState) => state === 'requested' || state === 'running' || state === 'switching'

/** A rebuild job as stored under `rebuild.<projection>`. */
export type RebuildJob = {
  id: string
  projection: ProjectionName
  state: RebuildState
  requestedAt: string
  /** Rebuild even though the stream no longer starts at sequence 1 (the result is partial). */
  force: boolean
  /** Worker running it, and its last sign of life; a job whose heartbeat is older than 3 lease TTLs (at least 5 s) is taken over. */
  owner?: string
  heartbeatAt?: string
  /** How many times a worker claimed it (a takeover restarts from scratch). */
  attempts: number
  /** Last stream sequence the shadow copy applied. */
  appliedSeq: number
  /** Events of the projection the shadow had still to read at its last report (0 once caught up). */
  pending: number
  /** The stream position the rebuilt model took over at (every live checkpoint was set to it). */
  switchedAtSeq?: number
  finishedAt?: string
  error?: string
}

/** Key of a projection's rebuild job. */
export const rebuildKey = (projection: string) => `rebuild.${projection}`

/** Opens (creating when missing) the job bucket. Only the latest value of a key is kept. */
export function openJobBucket(nc: NatsConnection, config: Config): Promise<KV> {
  return new Kvm(nc).create(topology(config).jobBucket, { history: 1, replicas: config.FANFARE_REPLICAS })
}

/** A projection's job and the revision to compare-and-set against; undefined when none. */
export async function readRebuildJob(kv: KV, projection: string): Promise<{ job: RebuildJob; revision: number } | undefined> {
  const e = await kv.get(rebuildKey(projection))
  if (!e || e.operation !== 'PUT') return undefined
  return { job: e.json<RebuildJob>(), revision: e.revision }
}
