import { afterAll, beforeAll, expect, test } from 'bun:test'
import { randomBytes } from 'node:crypto'
import { jetstreamManager, type JetStreamManager, type StreamConfig } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import { createAckedPublisher } from './acked-publish'
import { connectNats } from './nats'
import { TEST_NATS_URL } from './testing/env'

let nc: NatsConnection
let jsm: JetStreamManager
const prefix = `ap${randomBytes(4).toString('hex')}`
const streams: string[] = []

beforeAll(async () => {
  nc = await connectNats(TEST_NATS_URL, 'acked-publish-test')
  jsm = await jetstreamManager(nc)
})
afterAll(async () => {
  for (const s of streams) await jsm.streams.delete(s).catch(() => {})
  await nc.close()
})

async function stream(name: string, cfg: Partial<StreamConfig> = {}) {
  const full = `${prefix}_${name}`
  await jsm.streams.add({ name: full, subjects: [`${prefix}.${name}.>`], ...cfg })
  streams.push(full)
  return full
}

test('a batch is stored in the order given, with every message acknowledged', async () => {
  const name = await stream('order')
  const p = createAckedPublisher(nc)
  const messages = Array.from({ length: 500 }, (_, i) => ({ subject: `${prefix}.order.c${i % 7}`, body: JSON.stringify({ i }) }))
  const [a, b] = await Promise.all([p.publish(messages.slice(0, 250)), p.publish(messages.slice(250))])
  expect(a).toEqual({ stored: new Array(250).fill(true) })
  expect(b).toEqual({ stored: new Array(250).fill(true) })
  for (let seq = 1; seq <= 500; seq++) {
    const m = await jsm.streams.getMessage(name, { seq })
    expect(m!.json<{ i: number }>().i).toBe(seq - 1)
  }
  p.close()
})

test('a refused message is not stored and says why; the others of its batch are', async () => {
  await stream('full', { max_msgs: 2, discard: 'new' as StreamConfig['discard'] })
  const p = createAckedPublisher(nc)
  const out = await p.publish([1, 2, 3].map((i) => ({ subject: `${prefix}.full.x`, body: String(i) })))
  expect(out.stored).toEqual([true, true, false])
  expect(String(out.error)).toContain('refused')
  p.close()
})

test('a subject no stream takes is not stored (no responders), nor one nobody acknowledges (timeout)', async () => {
  const p = createAckedPublisher(nc, { timeoutMs: 300 })
  const none = await p.publish([{ subject: `${prefix}.nostream.x`, body: 'x' }])
  expect(none.stored).toEqual([false])
  expect(String(none.error)).toContain('503')
  // A plain subscriber that never answers: the batch ends at its timeout.
  const silent = nc.subscribe(`${prefix}.silent.x`)
  const t0 = Date.now()
  const out = await p.publish([{ subject: `${prefix}.silent.x`, body: 'x' }])
  expect(out.stored).toEqual([false])
  expect(String(out.error)).toContain('within 300 ms')
  expect(Date.now() - t0).toBeGreaterThanOrEqual(290)
  silent.unsubscribe()
  p.close()
})

test('close ends the batches in flight with what was acknowledged', async () => {
  const p = createAckedPublisher(nc, { timeoutMs: 10_000 })
  const silent = nc.subscribe(`${prefix}.silent2.x`)
  const pending = p.publish([{ subject: `${prefix}.silent2.x`, body: 'x' }])
  p.close()
  const out = await pending
  expect(out.stored).toEqual([false])
  expect(String(out.error)).toContain('closed')
  silent.unsubscribe()
})
