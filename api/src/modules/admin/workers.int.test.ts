import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { startTestWorker } from '../../../../stream-workers/src/testing/harness'
import type { Workers } from '../../../../stream-workers/src/workers'
import { until } from '../../../../test/e2e/harness'
import { createHarness, type ApiHarness } from '../../test-support'

describe('GET /admin/workers', () => {
  let h: ApiHarness
  const closers: (() => Promise<void>)[] = []

  /** A worker with its own connections, like a separate process. */
  const startWorker = async (): Promise<Workers> => {
    const w = await startTestWorker(h.env)
    closers.push(() => w.stop())
    return w
  }

  const view = async () => {
    const r = await h.call('GET', '/admin/workers', { token: h.adminToken })
    expect(r.status).toBe(200)
    return r.json as { workers: { id: string; partitions: number[]; since: string; heartbeatAt: string }[]; partitions: number }
  }

  beforeAll(async () => {
    h = await createHarness({ FANFARE_PARTITIONS: '4', FANFARE_LEASE_TTL_MS: '1500' })
  })
  afterAll(async () => {
    for (const close of closers) await close().catch(() => {})
    await h.close()
  })

  test('admin token only', async () => {
    expect((await h.call('GET', '/admin/workers')).status).toBe(401)
    expect((await h.call('GET', '/admin/workers', { token: h.ingestToken })).status).toBe(403)
  })

  test('empty before any worker created the lease bucket', async () => {
    expect(await view()).toEqual({ workers: [], partitions: 4 })
  })

  test('lists live workers and the partitions each holds, following joins and leaves', async () => {
    const a = await startWorker()
    const one = await until('worker a holds every partition', async () => {
      const v = await view()
      return v.workers.length === 1 && v.workers[0].partitions.length === 4 ? v : undefined
    }, 15_000, 100)
    expect(one.workers[0]).toMatchObject({ id: a.workerId, partitions: [0, 1, 2, 3] })
    expect(Date.parse(one.workers[0].since)).toBeLessThanOrEqual(Date.parse(one.workers[0].heartbeatAt))

    const b = await startWorker()
    const two = await until('a and b share the partitions', async () => {
      const v = await view()
      return v.workers.length === 2 && v.workers.every((w) => w.partitions.length === 2) ? v : undefined
    }, 15_000, 100)
    expect(two.workers.map((w) => w.id).sort()).toEqual([a.workerId, b.workerId].sort())
    expect(two.workers.flatMap((w) => w.partitions).sort()).toEqual([0, 1, 2, 3])
    // The view agrees with what each worker says it holds.
    for (const w of [a, b]) expect(two.workers.find((x) => x.id === w.workerId)!.partitions).toEqual(w.partitions())

    // A clean stop removes the heartbeat and releases the leases at once (no TTL wait).
    await a.stop()
    const after = await view()
    expect(after.workers.map((w) => w.id)).toEqual([b.workerId])
    await until('b takes every partition', async () => {
      const v = await view()
      return v.workers.length === 1 && v.workers[0].partitions.length === 4
    }, 15_000, 100)
  }, 60_000)
})
