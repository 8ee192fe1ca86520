import { afterAll, describe, expect, test } from 'bun:test'
import { createTestEnv, type TestEnv } from '../../core/testing/env'
import { spawnProc, until, type Proc } from '../e2e/harness'

const lines = (p: Proc, msg: string) =>
  p
    .output()
    .split('\n')
    .filter((l) => l.includes(`"msg":"${msg}"`))
    .map((l) => JSON.parse(l) as { time: string | number; partition?: number })
    .map((l) => ({ ...l, at: typeof l.time === 'number' ? l.time : Date.parse(l.time) }))

/**
 * A lowered FANFARE_LEASE_TTL_MS rolling out: the first worker restarted with it sets the lease
 * bucket's TTL, while the workers not restarted yet still renew at their old pace. They used to
 * lose their partitions over and over until restarted (10 s -> 2 s: 10 losses and 60 consumer
 * resets in 15 s for one old worker), each loss a stall of the partition. Now a worker renews at
 * the bucket's pace once its scan reads it: at most the one round of losses of the change itself.
 */
describe('lease TTL lowered on one worker while another runs', () => {
  let env: TestEnv
  const procs: Proc[] = []
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop('SIGKILL')))
    await env?.cleanup()
  })

  test('the worker started before follows the bucket and stops losing its partitions', async () => {
    env = await createTestEnv({ FANFARE_PARTITIONS: '4', LOG_LEVEL: 'info', FANFARE_LOG_FORMAT: 'json' })
    const old = spawnProc('old', 'stream-workers/src/main.ts', { ...env.vars, FANFARE_LEASE_TTL_MS: '6000' })
    procs.push(old)
    await until('the old worker holds every partition', () => lines(old, 'partition acquired').length >= 4, 30_000)
    const fresh = spawnProc('new', 'stream-workers/src/main.ts', { ...env.vars, FANFARE_LEASE_TTL_MS: '1500' })
    procs.push(fresh)
    await until('the new worker holds partitions', () => lines(fresh, 'partition acquired').length >= 1, 30_000)
    const changedAt = Date.now()
    await Bun.sleep(12_000)
    // The change itself may cost the old worker the keys it renewed more than 1.5 s before; after
    // a few of its periods (2 s), none.
    const late = lines(old, 'partition lease lost').filter((l) => l.at > changedAt + 5_000)
    expect(late).toEqual([])
    expect(old.proc.exitCode).toBeNull()
  }, 60_000)
})
