import { afterAll, describe, expect, test } from 'bun:test'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { connect } from '@nats-io/transport-node'
import { loadConfig } from '../../core/config'
import { ensureStreams, streamIdentity } from '../../core/nats'
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
        const jsm = await ensureStreams(nc, config)
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
