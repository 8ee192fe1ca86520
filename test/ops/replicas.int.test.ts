import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { jetstreamManager } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import { loadConfig } from '../../core/config'
import { connectNats, deploymentStreams, ensureStreams, topology } from '../../core/nats'
import { createTestEnv, TEST_NATS_URL, type TestEnv } from '../../core/testing/env'
import { runUntilExit } from '../e2e/harness'

// FANFARE_REPLICAS raised on an existing deployment whose NATS is one server, not a cluster (the
// operator set it before the cluster was there, or on the wrong NATS_URL). nats-server refuses a
// new stream of 3 replicas there ("replicas > 1 not supported in non-clustered mode") but took an
// update of an existing one, whose info then said 3 replicas while one copy existed: the
// deployment looked replicated and was not. Both must be refused alike, naming the variable.
describe('FANFARE_REPLICAS above 1 on a NATS that is not a cluster', () => {
  let env: TestEnv
  let nc: NatsConnection
  beforeAll(async () => {
    env = await createTestEnv()
    nc = await connectNats(TEST_NATS_URL, 'replicas-test')
    await ensureStreams(nc, env.config)
  })
  afterAll(async () => {
    await nc?.close()
    await env?.cleanup()
  })

  test('an existing stream is not moved to 3 replicas and the start is refused', async () => {
    const three = loadConfig({ ...env.vars, FANFARE_REPLICAS: '3' })
    const err = await ensureStreams(nc, three).then(() => null, (e: Error) => e)
    const jsm = await jetstreamManager(nc)
    for (const name of deploymentStreams(topology(env.config)).slice(0, 2)) expect((await jsm.streams.info(name)).config.num_replicas).toBe(1)
    expect(err?.message).toContain('FANFARE_REPLICAS')
  })

  // An operator's mistake, not a bug: one line naming the variable, no stack trace, from the
  // upgrade command as from a node (both printed a stack).
  test('the upgrade command and an API node say so in one line, exit 1', async () => {
    for (const entry of ['core/db/migrate-cli.ts', 'api/src/main.ts']) {
      const { code, output } = await runUntilExit(entry, { ...env.vars, FANFARE_REPLICAS: '3' }, 30_000)
      expect([entry, code]).toEqual([entry, 1])
      expect(output).toContain('ReplicasWithoutCluster: FANFARE_REPLICAS is 3 but the NATS server')
      expect(output).not.toMatch(/^\s+at /m)
    }
  }, 60_000)
})
