import { jetstreamManager } from '@nats-io/jetstream'
import { Bucket, Kvm, type KV, type KvEntry } from '@nats-io/kv'
import { nanos, type NatsConnection } from '@nats-io/transport-node'
import type { Config } from './config'
import { isNotFound, topology } from './nats'

/**
 * Layout of the partition lease bucket, shared by the stream workers (who write it) and the API
 * (which reads it for GET /admin/workers):
 * - `p.<partition>` = id of the worker holding the partition; its creation revision is the
 *   ownership's fencing token; renewed (updated) every ttl/3, expires ttl after the last write.
 * - `w.<workerId>` = WorkerInfo JSON, the worker's heartbeat, rewritten every ttl/3.
 */

/** What a worker announces under `w.<workerId>` every ttl/3. */
export type WorkerInfo = {
  id: string
  partitions: number[]
  since: string
  heartbeatAt: string
  /**
   * False while the worker's Postgres does not answer (absent: a worker of an older version, taken
   * as able). A worker that has lost Postgres for a while gives its partitions up only when another
   * live worker can apply them: see startLeases.
   */
  canApply?: boolean
}

/** Key of a partition's lease. */
export const partitionKey = (p: number) => `p.${p}`
/** Key of a worker's heartbeat. */
export const workerKey = (id: string) => `w.${id}`

/**
 * Opens (creating when missing) the lease bucket: keys expire ttl after their last write, and only
 * the latest value of a key is kept. Safe to call from every process.
 *
 * An existing bucket of another TTL (FANFARE_LEASE_TTL_MS changed) is updated to this one:
 * Kvm.create leaves an existing bucket as it is, and workers renew every ttl/3 of their own TTL,
 * so after a raise every key expired before its renewal and workers lost their partitions over and
 * over (and `npm run migrate` did not fix it either).
 */
export async function openLeaseBucket(nc: NatsConnection, config: Config): Promise<KV> {
  const bucket = topology(config).leaseBucket
  const kv = await new Kvm(nc).create(bucket, { ttl: config.FANFARE_LEASE_TTL_MS, history: 1, replicas: config.FANFARE_REPLICAS })
  const jsm = await jetstreamManager(nc)
  const info = await jsm.streams.info(`KV_${bucket}`)
  if (info.config.max_age !== nanos(config.FANFARE_LEASE_TTL_MS)) {
    // The de-duplication window may not exceed max_age (nats-server refuses a lowered TTL): the
    // server's default for a new stream, the TTL up to 2 minutes.
    const ttl = config.FANFARE_LEASE_TTL_MS
    await jsm.streams.update(info.config.name, { ...info.config, max_age: nanos(ttl), duplicate_window: nanos(Math.min(ttl, 120_000)) })
  }
  return kv
}

/**
 * Opens the lease bucket only if it exists (no worker ever started: undefined). For readers such as
 * the API, which must not create the bucket with its own idea of the TTL.
 */
export async function openLeaseBucketIfExists(nc: NatsConnection, config: Config): Promise<KV | undefined> {
  const bucket = topology(config).leaseBucket
  const jsm = await jetstreamManager(nc)
  try {
    await jsm.streams.info(`KV_${bucket}`)
  } catch (err) {
    if (isNotFound(err)) return undefined
    throw err
  }
  return new Kvm(nc).open(bucket)
}

/**
 * The entries under `filter` that hold a value now (a deletion marker is not one), each once.
 *
 * The keys come from the bucket stream's subject index (one stream info request, answered by the
 * server), then each is read. kv.keys() is not used: it runs an ordered push consumer that ends on
 * the message with nothing left pending, and a key that expires between the consumer's info and
 * its first delivery (leases expire all the time) leaves that consumer with nothing to deliver:
 * the listing then waited for the client's 30 s recovery (core/leases.int.test.ts; GET /admin/workers
 * took 14 s in a loaded test run). A key that expires between the index and its read is skipped.
 */
export async function liveEntries(kv: KV, filter = '>'): Promise<KvEntry[]> {
  if (!(kv instanceof Bucket)) throw new TypeError('liveEntries needs a bucket opened by Kvm')
  const info = await kv.jsm.streams.info(kv.stream, { subjects_filter: kv.fullKeyName(kv.encodeKey(filter)) })
  const keys = Object.keys(info.state.subjects ?? {}).map((subject) => kv.decodeKey(subject.substring(kv.prefixLen)))
  const entries = await Promise.all(keys.map((key) => kv.get(key)))
  return entries.filter((e): e is KvEntry => e !== null && e.operation === 'PUT')
}

/** The keys under `filter` that hold a value now, each once. */
export async function liveKeys(kv: KV, filter = '>'): Promise<string[]> {
  return (await liveEntries(kv, filter)).map((e) => e.key)
}

/** Live workers (those whose heartbeat has not expired), sorted by id. */
export async function listWorkers(kv: KV): Promise<WorkerInfo[]> {
  const out: WorkerInfo[] = []
  for (const e of await liveEntries(kv, 'w.>')) {
    try {
      out.push(e.json<WorkerInfo>())
    } catch {
      // an unreadable heartbeat is skipped, not fatal for the listing
    }
  }
  return out.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
}

/** Current holder of each leased partition (partition -> worker id); free partitions are absent. */
export async function listPartitionOwners(kv: KV): Promise<Map<number, string>> {
  const owners = new Map<number, string>()
  for (const e of await liveEntries(kv, 'p.>')) owners.set(Number(e.key.slice(2)), e.string())
  return owners
}

/**
 * Live workers with the partitions each holds now. Partitions come from the lease keys (the
 * truth), not from the heartbeat, which may be up to ttl/3 old.
 */
export async function workersView(kv: KV): Promise<WorkerInfo[]> {
  const [workers, owners] = await Promise.all([listWorkers(kv), listPartitionOwners(kv)])
  const held = new Map<string, number[]>()
  for (const [p, id] of owners) held.set(id, [...(held.get(id) ?? []), p])
  return workers.map((w) => ({ id: w.id, since: w.since, heartbeatAt: w.heartbeatAt, partitions: (held.get(w.id) ?? []).sort((a, b) => a - b) }))
}
