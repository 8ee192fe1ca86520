import { afterAll, describe, expect, test } from 'bun:test'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { jetstream, jetstreamManager, StorageType } from '@nats-io/jetstream'
import { connect } from '@nats-io/transport-node'
import { loadConfig } from '../../core/config'
import { connectPostgres } from '../../core/db/client'
import { projectionCheckpoints } from '../../core/db/schema'
import { subjects } from '../../core/events'
import { ensureStreams, streamIdentity, topology } from '../../core/nats'
import { createTestEnv, TEST_NATS_URL, type TestEnv } from '../../core/testing/env'
import { upgradeNats } from '../../core/upgrade'
import { freePort } from '../../core/process'
import { privateNats, type PrivateNats } from './private-nats'

/**
 * Workers take a new event-stream identity for a recreated stream and apply it from sequence 1
 * (stream-workers/src/runtime/runner.ts). nats-server 2.9 reports as a stream's `created` the time
 * it loaded the stream at its last start once any update rewrote the stream's meta file (and every
 * process updates the streams at start): so a second restart of NATS made an intact stream look
 * recreated, and the workers applied every event again (a `sum` board doubled after `npm start`
 * was stopped twice). The identity must survive restarts, and still change when the stream is
 * really deleted and created again.
 */
describe('event stream identity across nats-server restarts', () => {
  const storeDir = mkdtempSync(join(tmpdir(), 'fanfare-identity-'))
  let nats: PrivateNats | undefined
  afterAll(async () => {
    await nats?.stop()
    rmSync(storeDir, { recursive: true, force: true })
  })

  test('kept over restarts with an update after each, new for a recreated stream', async () => {
    nats = privateNats({ port: freePort(), storeDir })
    const run = Math.random().toString(36).slice(2, 8)
    const config = loadConfig({ FANFARE_STREAM: `IDENT_${run}`, FANFARE_SUBJECT_PREFIX: `ident${run}` })
    const ensure = async () => {
      const nc = await connect({ servers: nats!.url })
      try {
        // As `npm run migrate` does: an update of every setting (nodes update none), which keeps the identity.
        const jsm = await ensureStreams(nc, config, { apply: true })
        return await streamIdentity(jsm, config.FANFARE_STREAM)
      } finally {
        await nc.close()
      }
    }
    await nats.start()
    const first = await ensure()
    for (const restart of [nats.stop, nats.kill, nats.stop]) {
      await restart()
      // The store's files carry 1-second timestamps: a restart within the same second would hide it.
      await Bun.sleep(1100)
      await nats.start()
      expect(await ensure()).toBe(first)
    }

    const nc = await connect({ servers: nats.url })
    const jsm = await ensureStreams(nc, config)
    await jsm.streams.delete(config.FANFARE_STREAM)
    await nc.close()
    await Bun.sleep(10)
    expect(await ensure()).not.toBe(first)
  }, 90_000)
})

/**
 * An event stream made by an older version records no creation time, and the `created` NATS
 * reports may have moved since the workers last read it (a restart after a config update). The
 * upgrade command records the identity the checkpoints hold, not the one reported now: recording
 * the reported one made the workers take the stream for a recreated one and apply it all again.
 */
describe('upgrading an event stream that records no creation time', () => {
  let env: TestEnv | undefined
  afterAll(async () => {
    await env?.cleanup()
  })

  test('npm run migrate records the identity its checkpoints hold (without any, the reported one); a node records none', async () => {
    env = await createTestEnv()
    const name = env.config.FANFARE_STREAM
    const nc = await connect({ servers: TEST_NATS_URL })
    const database = await connectPostgres(env.vars.DATABASE_URL, { max: 1 })
    try {
      const jsm = await jetstreamManager(nc)
      // As an older version made it: no description.
      await jsm.streams.add({ name, subjects: [subjects.allEvents(env.config.FANFARE_SUBJECT_PREFIX)], storage: StorageType.File })
      const reported = (await jsm.streams.info(name)).created
      // A node's update records nothing (it would take the reported time, which may have moved).
      await ensureStreams(nc, env.config)
      expect((await jsm.streams.info(name)).config.description ?? '').not.toContain('incarnation=')
      // Change streams as an older version left them too.
      for (const stream of Object.values(topology(env.config).changeStreams)) {
        await jsm.streams.update(stream, { ...(await jsm.streams.info(stream)).config, description: undefined })
      }
      // No checkpoint holds one: the reported time. The change streams record theirs too.
      const recorded = (await upgradeNats(nc, env.config, database.db)).find((line) => line.startsWith('stream incarnations'))
      expect(recorded).toContain(`${name}@${reported}`)
      expect(await streamIdentity(jsm, name)).toBe(`${name}@${reported}`)
      for (const stream of Object.values(topology(env.config).changeStreams)) {
        expect((await jsm.streams.info(stream)).config.description).toContain('incarnation=')
      }
      const unrecord = async () => jsm.streams.update(name, { ...(await jsm.streams.info(name)).config, description: undefined })
      await unrecord()
      // The workers read it before NATS moved its `created`, and applied 10 events of it...
      const held = `${name}@2026-01-02T03:04:05.678901234Z`
      await database.db.insert(projectionCheckpoints).values([0, 1, 2].map((partition) => ({ projection: 'leaderboards', partition, seq: 10, stream: held })))
      await database.db.insert(projectionCheckpoints).values({ projection: 'chat', partition: 0, seq: 0, stream: `${name}@${reported}` })
      // ...of which it holds only 5: it is another stream (NATS lost its data), the reported one is its identity.
      const js = jetstream(nc)
      const publish = (n: number) => Promise.all(Array.from({ length: n }, () => js.publish(subjects.event(env!.config.FANFARE_SUBJECT_PREFIX, 0, 'score.submitted'), '{}')))
      await publish(5)
      expect(await upgradeNats(nc, env.config, database.db)).toContainEqual(`stream incarnations: recorded ${name}@${reported}`)
      await unrecord()
      // Once it holds all 10, it may be theirs: their identity.
      await publish(5)
      const done = await upgradeNats(nc, env.config, database.db)
      expect(done.some((line) => line.startsWith('stream incarnations') && line.includes(`${held} (the one its checkpoints hold`))).toBe(true)
      expect(await streamIdentity(jsm, name)).toBe(held)
      // Kept by the nodes' own updates, and not done twice.
      await ensureStreams(nc, env.config)
      expect(await streamIdentity(jsm, name)).toBe(held)
      expect((await upgradeNats(nc, env.config, database.db)).some((line) => line.startsWith('stream incarnations'))).toBe(false)
    } finally {
      await database.close()
      await nc.close()
    }
  })
})
