import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { jetstreamManager } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import { loadConfig } from '../../core/config'
import { connectNats, deploymentStreams, ensureStreams, topology } from '../../core/nats'
import { createTestEnv, TEST_NATS_URL, type TestEnv } from '../../core/testing/env'

// FANFARE_PARTITIONS is fixed for the life of a stream: a key's partition is hash % partitions, so
// another count moves keys. Events still waiting in their old partition would then race the key's
// new events in its new partition (per-key order lost), and with fewer partitions the events left in
// the partitions above the count are never consumed (acknowledged, never applied). A process
// started with another count than the stream's must refuse to start, naming the variable.
describe('FANFARE_PARTITIONS changed on an existing stream', () => {
  let env: TestEnv
  let nc: NatsConnection
  beforeAll(async () => {
    env = await createTestEnv({ FANFARE_PARTITIONS: '4' })
    nc = await connectNats(TEST_NATS_URL, 'partitions-test')
  })
  afterAll(async () => {
    await nc?.close()
    await env?.cleanup()
  })

  test('the same count starts again; another count is refused at start with a message naming the fix', async () => {
    await ensureStreams(nc, env.config)
    await ensureStreams(nc, env.config)
    for (const other of ['2', '8']) {
      const changed = loadConfig({ ...env.vars, FANFARE_PARTITIONS: other })
      const err = await ensureStreams(nc, changed).then(() => null, (e: Error) => e)
      expect(err?.name).toBe('PartitionsChanged')
      expect(err?.message).toContain('FANFARE_PARTITIONS')
      expect(err?.message).toContain(`${topology(env.config).eventStream} has 4 partitions`)
    }
    // The refusal changed nothing: the stream still records 4 and a process with 4 still starts.
    await ensureStreams(nc, env.config)
  })

  test('a stream from a version that did not record the count takes the count of the first process that starts on it', async () => {
    const jsm = await jetstreamManager(nc)
    const name = topology(env.config).eventStream
    const info = await jsm.streams.info(name)
    await jsm.streams.update(name, { ...info.config, description: '' })
    await ensureStreams(nc, env.config)
    expect((await jsm.streams.info(name)).config.description).toContain('partitions=4')
    const err = await ensureStreams(nc, loadConfig({ ...env.vars, FANFARE_PARTITIONS: '2' })).then(() => null, (e: Error) => e)
    expect(err?.name).toBe('PartitionsChanged')
  })

  test('two processes starting at once on a new stream with different counts: one of them is refused', async () => {
    const other = await connectNats(TEST_NATS_URL, 'partitions-test-2')
    const jsm = await jetstreamManager(nc)
    try {
      // A few rounds, each on a stream no process has made yet: both look for it at the same time.
      for (let round = 0; round < 3; round++) {
        const vars = { ...env.vars, FANFARE_STREAM: `${env.vars.FANFARE_STREAM}_R${round}`, FANFARE_SUBJECT_PREFIX: `${env.vars.FANFARE_SUBJECT_PREFIX}_r${round}` }
        const configs = ['4', '8'].map((n) => loadConfig({ ...vars, FANFARE_PARTITIONS: n }))
        try {
          const results = await Promise.all([ensureStreams(nc, configs[0]), ensureStreams(other, configs[1])].map((p) => p.then(() => 'started', (e: Error) => e.name)))
          const recorded = /partitions=(\d+)/.exec((await jsm.streams.info(topology(configs[0]).eventStream)).config.description ?? '')?.[1]
          // The one whose count the stream records starts; the other is refused.
          expect([round, results.sort()]).toEqual([round, ['PartitionsChanged', 'started']])
          const started = recorded === '4' ? 0 : 1
          await ensureStreams(nc, configs[started])
          expect(await ensureStreams(nc, configs[1 - started]).then(() => 'started', (e: Error) => e.name)).toBe('PartitionsChanged')
        } finally {
          for (const stream of deploymentStreams(topology(configs[0]))) await jsm.streams.delete(stream).catch(() => {})
        }
      }
    } finally {
      await other.close()
    }
  })
})
