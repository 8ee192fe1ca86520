import { afterAll, describe, test } from 'bun:test'
import { createTestEnv, type TestEnv } from '../../core/testing/env'
import { freePort, spawnProc, waitReady, type Proc } from '../e2e/harness'
import { apiAt, expectReadModelsMatch, ingestRounds, readModel, stopCleanly, startProxiedNats, type ProxiedNats } from './support'

/**
 * A worker partitioned from NATS (packets held, no reset) while it still reaches Postgres: its
 * leases expire and the other worker takes its partitions while the cut-off one may still hold
 * batches it was applying; when the path comes back, what it held reaches NATS late (acks, lease
 * renewals). Every acknowledged event must still be applied exactly once, in its key's order.
 */
describe('worker partitioned from NATS', () => {
  let env: TestEnv | undefined
  let proxied: ProxiedNats | undefined
  const procs: Proc[] = []
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop('SIGKILL')))
    await proxied?.stop()
    await env?.cleanup()
  })

  test('every acknowledged event applied once, in order, across the partition', async () => {
    proxied = await startProxiedNats('worker-stall')
    const { nats, proxy, proxiedUrl } = proxied
    // The lanes send as fast as the node answers: the key's rate limit is not what this is about.
    env = await createTestEnv({ FANFARE_PARTITIONS: '4', FANFARE_LEASE_TTL_MS: '2000', FANFARE_KEY_OPS_PER_SECOND: '10000000', FANFARE_KEY_OPS_BURST: '10000000' })
    const port = freePort()
    const base: Record<string, string> = { ...env.vars, HOST: '127.0.0.1', NATS_URL: nats.url }
    procs.push(
      spawnProc('api', 'api/src/main.ts', { ...base, PORT: String(port) }),
      spawnProc('worker-cut-off', 'stream-workers/src/main.ts', { ...base, NATS_URL: proxiedUrl }),
      spawnProc('worker', 'stream-workers/src/main.ts', base),
    )
    const api = apiAt(port, base)
    await waitReady(api.baseUrl, procs)
    const startedAt = Date.now()
    let phase: 'before' | 'stalled' | 'restored' = 'before'
    const oracle = await ingestRounds({
      apis: [api],
      run: Math.random().toString(36).slice(2, 8),
      players: 30,
      batch: 20,
      inFlight: 2,
      more: () => Date.now() - startedAt < 20_000,
      beforeRound: () => {
        const t = Date.now() - startedAt
        if (phase === 'before' && t > 4000) {
          phase = 'stalled'
          proxy.stall()
        } else if (phase === 'stalled' && t > 14_000) {
          phase = 'restored'
          proxy.restore()
        }
      },
    })
    const rm = readModel(env.vars.DATABASE_URL)
    try {
      await expectReadModelsMatch(rm, oracle, 45_000)
    } finally {
      await rm.close()
    }
    await stopCleanly(...procs)
  }, 120_000)
})
