import type { KV } from '@nats-io/kv'
import { listWorkers, liveKeys, partitionKey, workerKey, type WorkerInfo } from '../../../core/leases'
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
  /** The clock (ms); default Date.now. */
  now?: () => number
  /**
   * Whether this worker can apply events now; default always. 'no': take no partition (Postgres
   * does not answer), keep those held. 'out': the same, and once another live worker says in its
   * heartbeat that it can apply, give every held partition up and withdraw the heartbeat, so that
   * the others count this worker out and take its partitions (Postgres has not answered for a
   * while: see startWorkers). While no other worker can apply (they all lost Postgres), nothing
   * moves. Back to 'yes': heartbeat and take a share again.
   */
  able?: () => 'yes' | 'no' | 'out'
}

export type Leases = {
  /** Partitions held now. */
  held: () => number[]
  /** Forgets a partition whose runners found a newer owner; its runners already stopped. */
  drop: (partition: number) => void
  /** Stops scanning, releases every held partition (after its runners stop), removes the heartbeat. */
  stop: () => Promise<void>
}

type Held = {
  token: number
  /** Revision of our last write of the key: the next renew is a compare-and-set on it. */
  revision: number
  /**
   * When the last successful renew was SENT. NATS wrote the key after that moment, so the key
   * lives at least ttl from it; from the answer's arrival it could already have expired.
   */
  renewedAt: number
  /** The renew in flight, if any (at most one per partition: they compare-and-set in turn). */
  renewal?: Promise<void>
}

/**
 * Partition leases in a KV bucket. Two loops, every ttl/3 each (ttl: the bucket's keys' time-to-live,
 * FANFARE_LEASE_TTL_MS or the bucket's when lower, read at the first scan and at the scan after a
 * failed renew):
 * - renewals: heartbeat `w.<id>` and renew every held key with a compare-and-set on its last
 *   revision, all partitions at once and without waiting for any answer, so that one slow answer
 *   (or a slow release) never delays the others. A failed renew means the lease is lost; so does
 *   a lease whose last successful renew was sent more than 0.9 ttl ago (its key may have expired,
 *   and someone else may own it).
 * - the scan: give up the surplus above the fair share ceil(partitions / live workers), in the
 *   background (runners stop, then the key is deleted; the partition is not taken back meanwhile),
 *   and create free keys up to the share. A worker short of floor(partitions / live) scans every
 *   period/5 instead, for up to a ttl: the surplus others give up for it is taken within ~period/5
 *   of its release, not up to a period later.
 */
export function startLeases(deps: LeaseDeps): Leases {
  const { kv, workerId, logger } = deps
  const now = deps.now ?? Date.now
  const held = new Map<number, Held>()
  /** Partitions being given up: no longer renewed, not to be acquired again until released. */
  const releasing = new Map<number, Promise<void>>()
  const abort = new AbortController()
  const since = new Date().toISOString()
  /**
   * The time-to-live the keys have: ours, or the bucket's when lower. Every worker sets the bucket's
   * TTL to its FANFARE_LEASE_TTL_MS when it opens it, so while a lowered value rolls out a worker
   * started before keeps renewing at its old pace, and kept losing its partitions (its keys expired
   * between renewals) until it was restarted too. The scan reads the bucket's: at the first scan,
   * and after a renew failed, which is what a lowered TTL does to a worker renewing at the old pace
   * (its keys expire before their renewal). Not at every scan: a TTL changes once a rollout, and a
   * worker short of its share scans every period/5.
   */
  let ttl = deps.ttlMs
  /** The bucket's TTL is to be read at the next scan (see ttl). */
  let ttlUnread = true
  const followBucketTtl = async () => {
    if (!ttlUnread) return
    const bucketTtl = await kv.status().then((s) => s.ttl, () => 0)
    // Not read (NATS away): read at the next scan.
    if (bucketTtl <= 0) return
    ttlUnread = false
    if (Math.min(deps.ttlMs, bucketTtl) === ttl) return
    ttl = Math.min(deps.ttlMs, bucketTtl)
    logger.info({ ttlMs: ttl, configured: deps.ttlMs }, 'lease TTL follows the bucket')
    // The renewal loop sleeps for the period of the TTL it last knew: a lowered one would let the
    // keys this scan takes expire before it wakes (one more loss of every partition). It starts
    // its next round now, and sleeps the new period after it.
    wakeRenewal()
  }
  const period = () => Math.max(100, Math.floor(ttl / 3))
  /**
   * The scan's period while this worker holds fewer than its share of the partitions and others
   * hold the rest: they give their surplus up at their next scan (within a period), and waiting a
   * whole period more to notice left those partitions without an owner for up to that long.
   */
  const shortPeriod = () => Math.max(50, Math.floor(period() / 5))
  /** Since when this worker has been short of its share (see shortPeriod); undefined if it is not. */
  let shortSince: number | undefined
  /** Live workers at the last scan: a change (a join, a leave) starts a new rebalance. */
  let lastLive = 0
  // Start scanning at a worker-specific partition so workers do not all race for p.0 first.
  const offset = Math.floor(Math.random() * deps.partitions)

  /** Deletes the key if it is still ours, once no renew is in flight (its answer has the revision). */
  const deleteKey = async (p: number, h: Held) => {
    await h.renewal
    await kv.delete(partitionKey(p), { previousSeq: h.revision })
  }

  /** Forgets a lost lease; `which` guards against a late answer about an earlier lease of `p`. */
  const lose = (p: number, reason: string, err?: unknown, which?: Held) => {
    const h = held.get(p)
    if (!h || (which && which !== h)) return
    held.delete(p)
    logger.warn({ partition: p, token: h.token, reason, err }, 'partition lease lost')
    deps.onLost(p)
    // If the key is still ours (a renew that only timed out), free it for others right away.
    deleteKey(p, h).catch(() => {})
  }

  /** Gives a partition up in the background: stop its runners, then delete its key. */
  const release = (p: number): Promise<void> => {
    const h = held.get(p)
    if (!h) return releasing.get(p) ?? Promise.resolve()
    held.delete(p)
    const done = (async () => {
      try {
        await deps.onRelease(p)
        await deleteKey(p, h).catch((err) => logger.warn({ err, partition: p }, 'lease release failed; it will expire'))
        logger.info({ partition: p, token: h.token }, 'partition released')
      } catch (err) {
        logger.warn({ err, partition: p }, 'stopping the runners of a released partition failed; its lease will expire')
      } finally {
        releasing.delete(p)
      }
    })()
    releasing.set(p, done)
    return done
  }

  const renew = (p: number, h: Held) => {
    const sentAt = now()
    h.renewal = kv
      .update(partitionKey(p), workerId, h.revision)
      .then(
        (revision) => {
          h.revision = revision
          h.renewedAt = sentAt
        },
        (err) => {
          ttlUnread = true
          lose(p, 'renew failed', err, h)
        },
      )
      .finally(() => {
        h.renewal = undefined
      })
  }

  const heartbeat = () =>
    kv.put(
      workerKey(workerId),
      JSON.stringify({ id: workerId, partitions: [...held.keys()].sort((a, b) => a - b), since, heartbeatAt: new Date().toISOString(), canApply: able() === 'yes' } satisfies WorkerInfo),
    )

  const able = () => deps.able?.() ?? 'yes'
  /** Out of the rebalance (see LeaseDeps.able): no heartbeat, nothing held, nothing taken. */
  let out = false
  const renewAll = () => {
    if (out && able() !== 'yes') return
    if (out) logger.info('this worker can apply events again: taking its share of the partitions')
    out = false
    for (const [p, h] of held) {
      if (now() - h.renewedAt > ttl * 0.9) lose(p, 'not renewed in time')
      else if (!h.renewal) renew(p, h)
    }
    heartbeat().catch((err) => logger.warn({ err }, 'heartbeat failed'))
  }

  const scan = async () => {
    await followBucketTtl()
    if (out) return
    const state = able()
    if (state !== 'yes') {
      // Takes nothing it could not apply; gives what it holds up only to a worker that can.
      if (state === 'out' && (await listWorkers(kv)).some((w) => w.id !== workerId && w.canApply !== false)) standDown()
      return
    }
    // This worker is live whether or not its heartbeat, written by the renewal loop, made it into
    // the listing (at start it may not have): counted once either way.
    const live = (await liveKeys(kv, 'w.>')).filter((k) => k !== workerKey(workerId)).length + 1
    const share = Math.ceil(deps.partitions / live)
    const surplus = [...held.keys()].sort((a, b) => b - a).slice(0, Math.max(0, held.size - share))
    for (const p of surplus) void release(p)
    if (held.size >= share) return void updateShort(live)
    const taken = new Set((await liveKeys(kv, 'p.>')).map((k) => Number(k.slice(2))))
    for (let i = 0; i < deps.partitions && held.size < share && !abort.signal.aborted; i++) {
      const p = (offset + i) % deps.partitions
      if (taken.has(p) || held.has(p) || releasing.has(p)) continue
      const sentAt = now()
      try {
        const token = await kv.create(partitionKey(p), workerId)
        held.set(p, { token, revision: token, renewedAt: sentAt })
        logger.info({ partition: p, token }, 'partition acquired')
        deps.onAcquired(p, token)
      } catch {
        // someone else created it first
      }
    }
    updateShort(live)
  }

  /** Gives every held partition up and withdraws the heartbeat, until able() says 'yes' again. */
  const standDown = () => {
    out = true
    logger.warn({ partitions: [...held.keys()].sort((a, b) => a - b) }, 'this worker cannot apply events: giving its partitions up to the other workers')
    for (const p of [...held.keys()]) void release(p)
    kv.delete(workerKey(workerId)).catch((err) => logger.warn({ err }, 'heartbeat removal failed; it will expire'))
  }

  /**
   * Short of the share that the others' surplus will make up: look again soon, for as long as a
   * lease lives (the others see this worker at their next scan, then stop their runners). Below
   * floor(partitions / live) only: with 8 partitions and 3 workers one holds 2 for good.
   */
  const updateShort = (live: number) => {
    if (live !== lastLive) shortSince = undefined
    lastLive = live
    if (held.size < Math.floor(deps.partitions / live)) shortSince ??= now()
    else shortSince = undefined
  }

  /**
   * Runs `round` every `interval()` until stopped; a failed round is logged and the next one comes.
   * `wake` (if given) is set to a function that ends the current wait at once.
   */
  const every = (name: string, round: () => unknown, interval = period, wake?: (end: () => void) => void) =>
    (async () => {
      while (!abort.signal.aborted) {
        const started = now()
        try {
          await round()
        } catch (err) {
          logger.warn({ err }, `lease ${name} failed`)
        }
        const waiting = new AbortController()
        const stopWaiting = () => waiting.abort()
        abort.signal.addEventListener('abort', stopWaiting, { once: true })
        wake?.(stopWaiting)
        await sleep(Math.max(0, interval() - (now() - started)), waiting.signal)
        abort.signal.removeEventListener('abort', stopWaiting)
      }
    })()

  /** Ends the renewal loop's current wait (see followBucketTtl). */
  let wakeRenewal = () => {}
  const scanInterval = () => (shortSince !== undefined && now() - shortSince < ttl ? shortPeriod() : period())
  const loops = [every('renewal', renewAll, period, (end) => (wakeRenewal = end)), every('scan', scan, scanInterval)]

  return {
    held: () => [...held.keys()].sort((a, b) => a - b),
    drop: (p) => lose(p, 'fenced by a newer owner'),
    stop: async () => {
      abort.abort()
      await Promise.all(loops)
      await Promise.all([...held.keys()].map((p) => release(p)).concat([...releasing.values()]))
      await kv.delete(workerKey(workerId)).catch(() => {})
    },
  }
}
