import type { KV } from '@nats-io/kv'
import { partitionKey, workerKey, type WorkerInfo } from '../../../core/leases'
import type { Logger } from '../../../core/logger'
import { sleep } from '../../../core/backoff'

// The bucket layout is shared with the API (GET /admin/workers): it lives in core/leases.ts.
export { listWorkers, openLeaseBucket, type WorkerInfo } from '../../../core/leases'

export type LeaseDeps = {
  kv: KV
  workerId: string
  partitions: number
  ttlMs: number
  logger: Logger
  /** A partition is ours (its lease was created at revision `token`): start its runners. */
  onAcquired: (partition: number, token: number) => void
  /** The lease is gone (renew failed or expired): stop the runners at once, do not wait. */
  onLost: (partition: number) => void
  /** We give the partition up: stop its runners and resolve when they are idle. */
  onRelease: (partition: number) => Promise<void>
}

export type Leases = {
  /** Partitions held now. */
  held: () => number[]
  /** Forgets a partition whose runners found a newer owner; its runners already stopped. */
  drop: (partition: number) => void
  /** Stops scanning, releases every held partition (after its runners stop), removes the heartbeat. */
  stop: () => Promise<void>
}

type Held = { token: number; revision: number; renewedAt: number }

/**
 * Partition leases in a KV bucket. Every ttl/3: heartbeat `w.<id>`, renew each held key with a
 * compare-and-set on its last revision (a failed renew means the lease is lost), give up the
 * surplus above the fair share ceil(partitions / live workers), and create free keys up to it.
 */
export function startLeases(deps: LeaseDeps): Leases {
  const { kv, workerId, logger } = deps
  const held = new Map<number, Held>()
  const abort = new AbortController()
  const since = new Date().toISOString()
  const period = Math.max(100, Math.floor(deps.ttlMs / 3))
  // Start scanning at a worker-specific partition so workers do not all race for p.0 first.
  const offset = Math.floor(Math.random() * deps.partitions)

  const lose = (p: number, reason: string, err?: unknown) => {
    const h = held.get(p)
    if (!h) return
    held.delete(p)
    logger.warn({ partition: p, token: h.token, reason, err }, 'partition lease lost')
    deps.onLost(p)
    // If the key is still ours (a renew that only timed out), free it for others right away.
    kv.delete(partitionKey(p), { previousSeq: h.revision }).catch(() => {})
  }

  const release = async (p: number) => {
    const h = held.get(p)
    if (!h) return
    held.delete(p)
    await deps.onRelease(p)
    await kv.delete(partitionKey(p), { previousSeq: h.revision }).catch((err) => logger.warn({ err, partition: p }, 'lease release failed; it will expire'))
    logger.info({ partition: p, token: h.token }, 'partition released')
  }

  const heartbeat = () =>
    kv.put(
      workerKey(workerId),
      JSON.stringify({ id: workerId, partitions: [...held.keys()].sort((a, b) => a - b), since, heartbeatAt: new Date().toISOString() } satisfies WorkerInfo),
    )

  const tick = async () => {
    for (const [p, h] of [...held]) {
      if (abort.signal.aborted) return
      // Our own clock says the key may already have expired: someone else may own it.
      if (Date.now() - h.renewedAt > deps.ttlMs * 0.9) {
        lose(p, 'not renewed in time')
        continue
      }
      try {
        h.revision = await kv.update(partitionKey(p), workerId, h.revision)
        h.renewedAt = Date.now()
      } catch (err) {
        lose(p, 'renew failed', err)
      }
    }
    await heartbeat()
    const keys = await listKeys(kv, Math.max(1000, deps.ttlMs))
    const taken = new Set(keys.filter((k) => k.startsWith('p.')).map((k) => Number(k.slice(2))))
    const live = Math.max(1, keys.filter((k) => k.startsWith('w.')).length)
    const share = Math.ceil(deps.partitions / live)
    while (held.size > share && !abort.signal.aborted) {
      const surplus = [...held.keys()].sort((a, b) => b - a)[0]
      await release(surplus)
    }
    for (let i = 0; i < deps.partitions && held.size < share && !abort.signal.aborted; i++) {
      const p = (offset + i) % deps.partitions
      if (taken.has(p) || held.has(p)) continue
      try {
        const token = await kv.create(partitionKey(p), workerId)
        held.set(p, { token, revision: token, renewedAt: Date.now() })
        logger.info({ partition: p, token }, 'partition acquired')
        deps.onAcquired(p, token)
      } catch {
        // someone else created it first
      }
    }
  }

  const loop = (async () => {
    while (!abort.signal.aborted) {
      const started = Date.now()
      try {
        await tick()
      } catch (err) {
        logger.warn({ err }, 'lease round failed')
      }
      await sleep(Math.max(0, period - (Date.now() - started)), abort.signal)
    }
  })()

  return {
    held: () => [...held.keys()].sort((a, b) => a - b),
    drop: (p) => lose(p, 'fenced by a newer owner'),
    stop: async () => {
      abort.abort()
      await loop
      await Promise.all([...held.keys()].map((p) => release(p)))
      await kv.delete(workerKey(workerId)).catch(() => {})
    },
  }
}

/**
 * Every key of the bucket, or an error after `ms`. kv.keys() ends on a heartbeat of its ordered
 * consumer; when NATS restarts during a listing that consumer is gone, and the client only
 * recreates it after missed heartbeats and then waits for a 30 s one: the lease round (renewals,
 * re-acquiring after an outage) must not wait with it.
 */
async function listKeys(kv: KV, ms: number): Promise<string[]> {
  const iter = await kv.keys()
  const keys: string[] = []
  let timedOut = false
  const timer = setTimeout(() => {
    timedOut = true
    iter.stop()
  }, ms)
  try {
    for await (const k of iter) keys.push(k)
  } finally {
    clearTimeout(timer)
  }
  if (timedOut) throw new Error(`listing the lease keys took more than ${ms} ms`)
  return keys
}
