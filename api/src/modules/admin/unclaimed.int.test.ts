import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { jetstream } from '@nats-io/jetstream'
import { startTestWorker } from '../../../../stream-workers/src/testing/harness'
import type { Workers } from '../../../../stream-workers/src/workers'
import { topology } from '../../../../core/nats'
import { until } from '../../../../test/e2e/harness'
import { createHarness, type ApiHarness } from '../../test-support'

describe('GET /admin/projections: the catch of unclaimed subjects', () => {
  let h: ApiHarness
  let worker: Workers | undefined

  beforeAll(async () => {
    h = await createHarness({ FANFARE_UNCLAIMED_POLL_MS: '200' })
  })
  afterAll(async () => {
    await worker?.stop().catch(() => {})
    await h.close()
  })

  const report = async () => {
    const r = await h.call('GET', '/admin/projections', { token: h.adminToken })
    expect(r.status).toBe(200)
    return r.json
  }

  test('shows whether it started, its checkpoint past a stray, its dead letters; a rebuild of it is refused', async () => {
    const before = await report()
    expect(before.unclaimed).toEqual({ name: 'unclaimed', partition: 0, seq: 0, fence: 0, updatedAt: null, deadLetters: 0 })
    // Beside the projections, not among them: it is no read model.
    expect(before.projections.map((p: { projection: string }) => p.projection)).not.toContain('unclaimed')

    worker = await startTestWorker(h.env)
    await until('the worker holding partition 0 starts the catch', async () => (await report()).unclaimed.fence > 0, 15_000, 50)

    // Published past the API by a service with NATS access: an area no projection consumes.
    const t = topology(h.env.config)
    const stray = await jetstream(h.nc).publish(`${t.prefix}.ev.0.nobody.thing`, JSON.stringify({ hello: 'stray' }))
    const seen = await until('the catch writes the stray', async () => {
      const u = (await report()).unclaimed
      return u.seq >= stray.seq ? u : undefined
    }, 15_000, 50)
    expect(seen).toMatchObject({ name: 'unclaimed', partition: 0, seq: stray.seq, deadLetters: 1 })
    expect(seen.fence).toBeGreaterThan(0)
    expect(Date.parse(seen.updatedAt)).toBeGreaterThan(0)

    const letters = await h.call('GET', '/admin/dead-letters', { token: h.adminToken })
    expect(letters.json.deadLetters.map((d: { projection: string; streamSeq: number }) => [d.projection, d.streamSeq])).toEqual([['unclaimed', stray.seq]])

    // Not a read model: refused with a reason, and no job is written.
    for (const method of ['POST', 'GET']) {
      const rebuild = await h.call(method, '/admin/projections/unclaimed/rebuild', { token: h.adminToken })
      expect([method, rebuild.status, rebuild.json.error.code]).toEqual([method, 404, 'unknown_projection'])
      expect(rebuild.json.error.message).toContain('not a read model')
    }
    expect((await h.call('GET', '/admin/rebuilds', { token: h.adminToken })).json.jobs).toEqual([])
  }, 60_000)
})
