import { afterAll, describe, expect, test } from 'bun:test'
import { jetstream, jetstreamManager, type JetStreamManager } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import { connectNats, deploymentStreams, ensureStreams, legacyChangeStream, streamExists, topology, UpgradeRequired } from '../../core/nats'
import { createTestEnv, type TestEnv } from '../../core/testing/env'
import { runUntilExit, spawnProc } from '../e2e/harness'

/** Runs `npm run migrate`'s entry point with `vars` (and nothing else of this environment): its exit code and output. */
const runMigrate = (vars: Record<string, string | undefined>) => runUntilExit('core/db/migrate-cli.ts', vars, 60_000)

/**
 * A rolling upgrade from a version with one shared change stream: nodes of the new version must
 * never delete it (older nodes still read it); they refuse to start and name the upgrade command,
 * which removes it, creates the new streams, and is safe to run again.
 */
describe('upgrade steps run from npm run migrate, never from a node', () => {
  let env: TestEnv | undefined
  let nc: NatsConnection | undefined
  afterAll(async () => {
    if (nc && env) {
      const jsm = await jetstreamManager(nc)
      await jsm.streams.delete(legacyChangeStream(env.config)).catch(() => {})
    }
    await nc?.close()
    await env?.cleanup()
  })

  test('a starting node leaves the old change stream alone; the upgrade command removes it', async () => {
    env = await createTestEnv({ LOG_LEVEL: 'warn' })
    nc = await connectNats(env.vars.NATS_URL, 'upgrade-test')
    const jsm: JetStreamManager = await jetstreamManager(nc)
    const legacy = legacyChangeStream(env.config)
    const prefix = env.config.FANFARE_SUBJECT_PREFIX
    // What an older Fanfare left: every change notice in one stream, still read by its API nodes.
    await jsm.streams.add({ name: legacy, subjects: [`${prefix}.changes.>`] })
    await jetstream(nc).publish(`${prefix}.changes.leaderboard.b1`, '{}')
    const before = await jsm.streams.info(legacy)

    // A node of the new version starting during the rolling upgrade, in process and as processes.
    await expect(ensureStreams(nc, env.config)).rejects.toBeInstanceOf(UpgradeRequired)
    const worker = spawnProc('worker', 'stream-workers/src/main.ts', env.vars)
    const api = spawnProc('api', 'api/src/main.ts', { ...env.vars, PORT: '0', HOST: '127.0.0.1' })
    expect(await worker.proc.exited).not.toBe(0)
    expect(await api.proc.exited).not.toBe(0)
    await Bun.sleep(50)
    for (const p of [worker, api]) expect(p.output()).toContain('npm run migrate')
    // Nothing was deleted: the older nodes' stream is there with its notices.
    const after = await jsm.streams.info(legacy)
    expect([after.created, after.state.messages]).toEqual([before.created, before.state.messages])

    const first = await runMigrate(env.vars)
    expect(first.code, first.output).toBe(0)
    expect(first.output).toContain(`deleted ${legacy}`)
    expect(await streamExists(jsm, legacy)).toBe(false)
    for (const name of deploymentStreams(topology(env.config))) expect(await streamExists(jsm, name)).toBe(true)

    // Idempotent: a second run finds nothing to do.
    const second = await runMigrate(env.vars)
    expect(second.code, second.output).toBe(0)
    expect(second.output).not.toContain('deleted')
    expect(second.output).toContain('nats streams and buckets match the config')

    // Nodes of the new version start now.
    await ensureStreams(nc, env.config)
  }, 60_000)

  test('the upgrade command needs at least one of DATABASE_URL and NATS_URL', async () => {
    const res = await runMigrate({ DATABASE_URL: undefined, NATS_URL: undefined })
    expect(res.code).toBe(2)
    expect(res.output).toContain('neither DATABASE_URL nor NATS_URL')
  })
})
