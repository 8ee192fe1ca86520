import { afterAll, beforeAll, expect, test } from 'bun:test'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { jetstreamManager, type JetStreamManager, type StreamConfig } from '@nats-io/jetstream'
import { headers as natsHeaders, type NatsConnection } from '@nats-io/transport-node'
import { createAckedPublisher } from './acked-publish'
import { connectNats } from './nats'
import { freePort } from './process'
import { TEST_NATS_URL } from './testing/env'
import { privateNats } from '../test/cluster/private-nats'

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
  expect(a.stored).toEqual(new Array(250).fill(true))
  expect(b.stored).toEqual(new Array(250).fill(true))
  expect(a.error).toBeUndefined()
  expect(b.error).toBeUndefined()
  // Each acknowledgement is its message's: the stream, and sequences in publish order.
  expect([...a.acks, ...b.acks]).toEqual(Array.from({ length: 500 }, (_, i) => ({ stream: name, seq: i + 1, duplicate: false })))
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
  expect(out.acks.map((a) => a?.seq)).toEqual([1, 2, undefined])
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

test('a message id already stored is acknowledged duplicate with the first copy\'s sequence and stored once', async () => {
  const name = await stream('dedup')
  const p = createAckedPublisher(nc)
  const first = await p.publish([
    { subject: `${prefix}.dedup.x`, body: 'a', msgId: 'id-a' },
    { subject: `${prefix}.dedup.x`, body: 'b', msgId: 'id-b' },
  ])
  expect(first.acks).toEqual([
    { stream: name, seq: 1, duplicate: false },
    { stream: name, seq: 2, duplicate: false },
  ])
  // Resent within one batch and across batches: JetStream answers with the stored copy's sequence.
  const again = await p.publish([
    { subject: `${prefix}.dedup.x`, body: 'b again', msgId: 'id-b' },
    { subject: `${prefix}.dedup.x`, body: 'c', msgId: 'id-c' },
    { subject: `${prefix}.dedup.x`, body: 'c again', msgId: 'id-c' },
  ])
  expect(again.stored).toEqual([true, true, true])
  expect(again.acks).toEqual([
    { stream: name, seq: 2, duplicate: true },
    { stream: name, seq: 3, duplicate: false },
    { stream: name, seq: 3, duplicate: true },
  ])
  expect((await jsm.streams.info(name)).state.messages).toBe(3)
  expect((await jsm.streams.getMessage(name, { seq: 2 }))!.string()).toBe('b')
  p.close()
})

test('a message\'s own headers replace the batch\'s; its id goes with them, or with a copy of the batch\'s', async () => {
  const name = await stream('headers')
  const p = createAckedPublisher(nc)
  const batch = natsHeaders()
  batch.set('traceparent', 'batch')
  const own = natsHeaders()
  own.set('traceparent', 'own')
  const out = await p.publish(
    [
      { subject: `${prefix}.headers.x`, body: '1' },
      { subject: `${prefix}.headers.x`, body: '2', msgId: 'm2' },
      { subject: `${prefix}.headers.x`, body: '3', msgId: 'm3', headers: own },
    ],
    { headers: batch },
  )
  expect(out.stored).toEqual([true, true, true])
  const header = async (seq: number, k: string) => (await jsm.streams.getMessage(name, { seq }))!.header.get(k)
  expect([await header(1, 'traceparent'), await header(1, 'Nats-Msg-Id')]).toEqual(['batch', ''])
  expect([await header(2, 'traceparent'), await header(2, 'Nats-Msg-Id')]).toEqual(['batch', 'm2'])
  expect([await header(3, 'traceparent'), await header(3, 'Nats-Msg-Id')]).toEqual(['own', 'm3'])
  // The batch's header set is not changed by a message's id.
  expect(batch.get('Nats-Msg-Id')).toBe('')
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

test('a lost connection ends the batches in flight at once, not at their timeout (their acknowledgements went with it)', async () => {
  // A private server: this test kills it. (bench/fault-soak.ts found clients waiting the whole
  // publish timeout after a 2 s NATS restart.)
  const storeDir = mkdtempSync(join(tmpdir(), 'fanfare-acked-publish-'))
  const nats = privateNats({ port: freePort(), storeDir })
  await nats.start()
  const own = await connectNats(nats.url, 'acked-publish-test-kill')
  try {
    const p = createAckedPublisher(own, { timeoutMs: 30_000 })
    // A plain subscriber that never answers: only the connection's loss can end the batch early.
    const silent = own.subscribe(`${prefix}.silent3.x`)
    await own.flush()
    const t0 = Date.now()
    const pending = p.publish([{ subject: `${prefix}.silent3.x`, body: 'x' }])
    await own.flush()
    await nats.kill()
    const out = await pending
    expect(out.stored).toEqual([false])
    expect(String(out.error)).toContain('connection lost')
    expect(Date.now() - t0).toBeLessThan(5000)
    silent.unsubscribe()
    p.close()
  } finally {
    await own.close().catch(() => {})
    await nats.stop()
    rmSync(storeDir, { recursive: true, force: true })
  }
}, 40_000)

test('a publish on a closed or draining connection ends at once, not at its timeout (nothing was sent, so nothing can be acknowledged)', async () => {
  const subject = `${prefix}.closed.x`
  for (const end of ['close', 'drain'] as const) {
    const own = await connectNats(TEST_NATS_URL, `acked-publish-test-${end}`)
    const p = createAckedPublisher(own, { timeoutMs: 30_000 })
    // The acknowledgement subscription exists before the connection ends, as on a running node.
    await p.publish([{ subject: `${prefix}.nobody.x`, body: 'x' }], { timeoutMs: 1 })
    // A batch in flight when the connection ends, sent to a subscriber that never answers.
    const silent = own.subscribe(`${prefix}.silent4.x`)
    await own.flush()
    const t0 = Date.now()
    const inFlight = p.publish([{ subject: `${prefix}.silent4.x`, body: 'x' }])
    await own.flush()
    const ending = end === 'close' ? own.close() : own.drain()
    const out = await p.publish([{ subject, body: 'x' }, { subject, body: 'y' }])
    expect(out.stored).toEqual([false, false])
    expect(out.error).toBeDefined()
    expect((await inFlight).stored).toEqual([false])
    expect(Date.now() - t0).toBeLessThan(1000)
    await ending
    silent.unsubscribe()
    p.close()
  }
}, 20_000)
