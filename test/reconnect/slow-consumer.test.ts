import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { jetstream } from '@nats-io/jetstream'
import { connect as tcpConnect, type Socket } from 'node:net'
import { channelOf, runOf, type ChangeNotice } from '../../core/channels'
import { connectPostgres, type Database } from '../../core/db/client'
import { subjects } from '../../core/events'
import { createLogger } from '../../core/logger'
import { connectNats, ensureStreams } from '../../core/nats'
import { createTestEnv, type TestEnv } from '../../core/testing/env'
import { closeCodeIn, maskedFrame, upgradeRequest } from '../../core/testing/raw-websocket'
import { startApi, type RunningApi } from '../../api/src/server'
import { until, WsClient } from '../e2e/harness'

/**
 * A raw WebSocket client that completes the handshake, subscribes, then stops reading: its kernel
 * buffers fill, then the server's queue for it grows past FANFARE_WS_BACKPRESSURE_BYTES.
 */
async function stalledClient(port: number, channel?: string) {
  const socket: Socket = tcpConnect({ host: '127.0.0.1', port })
  await new Promise<void>((ok, fail) => socket.once('connect', () => ok()).once('error', fail))
  const chunks: Buffer[] = []
  let ended = false
  socket.on('data', (c: Buffer) => chunks.push(c))
  socket.on('close', () => (ended = true))
  socket.on('error', () => (ended = true))
  socket.write(upgradeRequest(`127.0.0.1:${port}`))
  await until('handshake', () => Buffer.concat(chunks).includes('\r\n\r\n'), 5_000)
  if (channel) {
    socket.write(maskedFrame({ op: 'subscribe', channel }))
    await until('snapshot to the stalled client', () => Buffer.concat(chunks).includes('"snapshot"'), 5_000)
  }
  socket.pause() // stop reading: the kernel and then the server buffer what is sent
  return {
    send: (frames: Buffer) => socket.write(frames),
    resume: () => socket.resume(),
    ended: () => ended,
    received: () => Buffer.concat(chunks),
    destroy: () => socket.destroy(),
  }
}

describe('slow consumers', () => {
  let env: TestEnv
  let database: Database
  let nc: Awaited<ReturnType<typeof connectNats>>
  let api: RunningApi
  const logged: string[] = []

  beforeAll(async () => {
    env = await createTestEnv({ PORT: '0', HOST: '127.0.0.1', FANFARE_WS_BACKPRESSURE_BYTES: String(256 * 1024) })
    database = await connectPostgres(env.vars.DATABASE_URL)
    nc = await connectNats(env.vars.NATS_URL, 'slow-consumer-test')
    await ensureStreams(nc, env.config)
    api = await startApi({ config: env.config, db: database.db, nc, logger: createLogger('info', {}, { output: { write: (l: string) => void logged.push(l) }, format: 'json' }) })
  })
  afterAll(async () => {
    await api?.stop()
    await nc?.close()
    await database?.close()
    await env?.cleanup()
  })

  test('a client that stops reading is cut off; a normal client gets every update', async () => {
    const channel = channelOf.chat('flood')
    const normal = await WsClient.open(`ws://127.0.0.1:${api.port}/v1/ws`)
    normal.send({ op: 'subscribe', channel })
    await until('normal snapshot', () => normal.of(channel).length === 1)
    const slow = await stalledClient(api.port, channel)
    const js = jetstream(nc)
    const text = 'x'.repeat(60_000)
    const total = 300 // about 18 MB: far past the kernel's socket buffers and the 256 KiB limit
    for (let v = 1; v <= total; v++) {
      const n: ChangeNotice = {
        channel,
        version: v,
        epoch: 'e1',
        data: { kind: 'posted', message: { id: `m${v}`, room: 'flood', user: 'u', text, postedAt: new Date().toISOString() } },
        at: new Date().toISOString(),
      }
      await js.publish(subjects.change(env.config.FANFARE_SUBJECT_PREFIX, channel), JSON.stringify(runOf(n)))
    }
    await until('normal client got every update', () => normal.of(channel).length === total + 1, 30_000)
    const versions = normal.of(channel).map((f) => f.version)
    expect(versions).toEqual(Array.from({ length: total + 1 }, (_, i) => i))
    slow.resume()
    await until('stalled client disconnected', () => slow.ended(), 10_000)
    const got = slow.received().length
    // It never got the whole flood: the server cut it instead of queueing 18 MB for it. (What the
    // server may queue is checked where it can fail: slow-consumers.test.ts, closed before 1.5x the
    // limit. A process RSS bound here could not: this process publishes the flood itself.)
    expect(got).toBeLessThan(total * text.length)
    // It is told why: a close frame with 4008 after what was queued for it.
    expect(closeCodeIn(slow.received())).toBe(4008)
    console.log(`stalled client: ${got} bytes before the cut, then close 4008`)
    // The operator is told too, with who it was (an anonymous viewer here) and from where.
    const line = logged.map((l) => JSON.parse(l)).find((l) => l.msg?.startsWith('closed a slow consumer'))
    expect(line).toMatchObject({ caller: 'anonymous', address: '127.0.0.1', channels: 1 })
    normal.close()
    slow.destroy()
  }, 60_000)

  test("a client that stops reading its own replies is cut off the same way", async () => {
    // Nothing published: only the server's answers to this client's frames (error frames here)
    // fill its queue. They are direct sends, checked when Bun reports backpressure. Each frame
    // has a 1000-character unknown field, which its invalid_frame answer names (twice).
    const slow = await stalledClient(api.port)
    const frame = maskedFrame({ op: 'unsubscribe', ref: 'r', channel: 'leaderboard:b', ['x'.repeat(1000)]: 0 })
    slow.send(Buffer.concat(Array.from({ length: 12_000 }, () => frame))) // ~12 MB of ~1 KB answers
    await Bun.sleep(500)
    slow.resume()
    await until('stalled client disconnected', () => slow.ended(), 20_000)
    expect(closeCodeIn(slow.received())).toBe(4008)
    expect(slow.received().length).toBeLessThan(12_000 * 1000)
    slow.destroy()
  }, 60_000)
})
