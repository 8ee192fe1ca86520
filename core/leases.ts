import { jetstreamManager } from '@nats-io/jetstream'
import { Kvm, type KV } from '@nats-io/kv'
import type { NatsConnection } from '@nats-io/transport-node'
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
export type WorkerInfo = { id: string; partitions: number[]; since: string; heartbeatAt: string }

/** Key of a partition's lease. */
export const partitionKey = (p: number) => `p.${p}`
/** Key of a worker's heartbeat. */
export const workerKey = (id: string) => `w.${id}`

/**
 * Opens (creating when missing) the lease bucket: keys expire ttl after their last write, and only
 * the latest value of a key is kept. Safe to call from every process.
 */
export function openLeaseBucket(nc: NatsConnection, config: Config): Promise<KV> {
  return new Kvm(nc).create(topology(config).leaseBucket, { ttl: config.FANFARE_LEASE_TTL_MS, history: 1, replicas: config.FANFARE_REPLICAS })
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

/** Every key of the bucket matching `filter`, each once (a key written during the listing comes twice). */
export async function collectKeys(kv: KV, filter = '>'): Promise<string[]> {
  const keys = new Set<string>()
  for await (const k of await kv.keys(filter)) keys.add(k)
  return [...keys]
}

/** Live workers (those whose heartbeat has not expired), sorted by id. */
export async function listWorkers(kv: KV): Promise<WorkerInfo[]> {
  const out: WorkerInfo[] = []
  for (const key of await collectKeys(kv, 'w.>')) {
    const e = await kv.get(key)
    if (!e || e.operation !== 'PUT') continue
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
  for (const key of await collectKeys(kv, 'p.>')) {
    const e = await kv.get(key)
    if (!e || e.operation !== 'PUT') continue
    owners.set(Number(key.slice(2)), e.string())
  }
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
  return workers.map((w) => ({ ...w, partitions: (held.get(w.id) ?? []).sort((a, b) => a - b) }))
}
