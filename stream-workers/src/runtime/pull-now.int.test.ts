import { afterAll, beforeAll, expect, test } from 'bun:test'
import { AckPolicy, jetstream, jetstreamManager, type JetStreamManager } from '@nats-io/jetstream'
import { connect, type NatsConnection } from '@nats-io/transport-node'
import { TEST_NATS_URL } from '../../../core/testing/env'
import { until } from '../../../core/testing/wait'
import { pullNow } from './pull-now'

const stream = `T_PULLNOW_${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`.toUpperCase()
let nc: NatsConnection
let jsm: JetStreamManager
beforeAll(async () => {
  nc = await connect({ servers: TEST_NATS_URL })
  jsm = await jetstreamManager(nc)
  await jsm.streams.add({ name: stream, subjects: [`${stream}.>`] })
  await jsm.consumers.add(stream, { durable_name: 'c', ack_policy: AckPolicy.All })
})
afterAll(async () => {
  await jsm?.streams.delete(stream).catch(() => {})
  await nc?.close()
})

const pull = (max: number) => pullNow(nc, { apiPrefix: '$JS.API', stream, consumer: 'c', max, timeoutMs: 5_000 })

test('a no_wait pull takes what the consumer holds now and ends at once, however much it asked for', async () => {
  const started = performance.now()
  expect(await pull(10)).toEqual({ msgs: [] })
  const js = jetstream(nc)
  for (const n of [1, 2, 3]) await js.publish(`${stream}.e`, String(n))
  const { msgs, err } = await pull(10)
  expect(err).toBeUndefined()
  // The delivery info nats.js' JsMsg would give, read from the reply subject.
  expect(msgs.map((m) => [m.seq, new TextDecoder().decode(m.data), m.subject, m.info.stream, m.info.consumer, m.info.deliverySequence, m.info.deliveryCount, m.info.pending])).toEqual([
    [1, '1', `${stream}.e`, stream, 'c', 1, 1, 2],
    [2, '2', `${stream}.e`, stream, 'c', 2, 1, 1],
    [3, '3', `${stream}.e`, stream, 'c', 3, 1, 0],
  ])
  expect(msgs[0].info.timestampNanos).toBeGreaterThan(0)
  // Two pulls that found too little to fill them, neither waited for more (an expiry would be seconds).
  expect(performance.now() - started).toBeLessThan(1_000)
  // Exactly `max` when more are there: the rest stays for the next pull.
  for (const n of [4, 5, 6]) await js.publish(`${stream}.e`, String(n))
  expect((await pull(2)).msgs.map((m) => m.seq)).toEqual([4, 5])
  // The consumer acks all: acking the last delivery acks everything before it.
  msgs[2].ack()
  await nc.flush()
  expect((await jsm.consumers.info(stream, 'c')).ack_floor.stream_seq).toBe(3)
  expect((await pull(10)).msgs.map((m) => m.seq)).toEqual([6])
})

test('a pull on a connection that is closed fails at once and leaves no timer behind', async () => {
  const closed = await connect({ servers: TEST_NATS_URL })
  await closed.close()
  const uncaught: unknown[] = []
  const onError = (err: unknown) => void uncaught.push(err)
  process.on('uncaughtException', onError)
  try {
    const result = await pullNow(closed, { apiPrefix: '$JS.API', stream, consumer: 'c', max: 10, timeoutMs: 50 }).catch((err: unknown) => ({ msgs: [], err }))
    expect(result.msgs).toEqual([])
    expect(result.err).toBeInstanceOf(Error)
    // Past the pull's timeout: its timer, had it been left armed, would have run by now.
    await Bun.sleep(200)
    expect(uncaught).toEqual([])
  } finally {
    process.off('uncaughtException', onError)
  }
})

/**
 * A stream of three events and a consumer that counted them when it was made, whose second event
 * was removed before its delivery, after a pull delivered the first: nats-server 2.9.10 goes on
 * counting the removed one in the consumer's num_pending.
 */
async function streamWithARemovedCountedEvent() {
  const name = `T_PULLGONE_${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`.toUpperCase()
  await jsm.streams.add({ name, subjects: [`${name}.>`] })
  const js = jetstream(nc)
  const acks = []
  for (const n of [1, 2, 3]) acks.push(await js.publish(`${name}.e`, String(n)))
  await jsm.consumers.add(name, { durable_name: 'c', ack_policy: AckPolicy.All })
  const pull = (o: { max: number; timeoutMs: number; expiresMs?: number }) => pullNow(nc, { apiPrefix: '$JS.API', stream: name, consumer: 'c', ...o })
  expect((await pull({ max: 1, timeoutMs: 5_000 })).msgs.map((m) => m.seq)).toEqual([1])
  await jsm.streams.deleteMessage(name, acks[1].seq)
  // The third is delivered, and says one more is pending: the removed second, still counted.
  const third = await pull({ max: 10, timeoutMs: 5_000 })
  expect(third.msgs.map((m) => [m.seq, m.info.pending])).toEqual([[3, 1]])
  return { name, js, pull, close: () => jsm.streams.delete(name).catch(() => {}) }
}

test('a no_wait pull with an expiry is ended by the server when a removed message is still counted; without one, nothing answers', async () => {
  const s = await streamWithARemovedCountedEvent()
  try {
    let started = performance.now()
    const silent = await s.pull({ max: 10, timeoutMs: 1_000 })
    expect(silent.msgs).toEqual([])
    expect(silent.err?.message).toContain('no end within 1000 ms')
    expect(performance.now() - started).toBeGreaterThanOrEqual(990)
    started = performance.now()
    // The server's own end (a 408 at its expiry), long before the client's bound.
    expect(await s.pull({ max: 10, timeoutMs: 5_000, expiresMs: 200 })).toEqual({ msgs: [] })
    expect(performance.now() - started).toBeLessThan(1_000)
    // An expiry does not hold a pull that finds what it asked for: it ends after the last one. (The
    // consumer hears of a stored message a moment after the publish is acknowledged: on a loaded
    // machine a pull right after it may find nothing yet (CI, load 9: answered empty at once); the
    // runner's next pull takes it then, and so does this test's.)
    await s.js.publish(`${s.name}.e`, '4')
    let found: number[] = []
    for (let tries = 0; tries < 10 && found.length === 0; tries++) {
      started = performance.now()
      found = (await s.pull({ max: 10, timeoutMs: 5_000, expiresMs: 2_000 })).msgs.map((m) => m.seq)
    }
    expect(found).toEqual([4])
    expect(performance.now() - started).toBeLessThan(1_000)
  } finally {
    await s.close()
  }
})

// What the runner's delivery-sequence check is for: a delivery sent to a pull after the pull's own
// bound ended it (the server still saw the inbox's interest) is never seen by the runner, and the
// consumer's next delivery says so.
test('a delivery the server sends after the pull gave up is not taken by it, and the next delivery shows the gap', async () => {
  const s = await streamWithARemovedCountedEvent()
  // Another connection's interest in every inbox keeps the server delivering to a pull that ended:
  // the window between the client's bound and its unsubscribe reaching the server, made long.
  const spy = await connect({ servers: TEST_NATS_URL })
  const seen: number[] = []
  spy.subscribe('_INBOX.>', { callback: (_err, m) => void (m.reply?.startsWith('$JS.ACK.') && seen.push(Number(m.reply.split('.')[5]))) })
  await spy.flush()
  try {
    expect((await s.pull({ max: 10, timeoutMs: 300 })).msgs).toEqual([])
    // The pull the server still holds takes the next event stored.
    await s.js.publish(`${s.name}.e`, '4')
    await until('the late delivery', () => seen.includes(4) || undefined)
    await s.js.publish(`${s.name}.e`, '5')
    const next = await s.pull({ max: 10, timeoutMs: 5_000 })
    // Deliveries 1 (seq 1), 2 (seq 3), 3 (seq 4, to the pull that gave up), 4 (seq 5).
    expect(next.msgs.map((m) => [m.seq, m.info.deliverySequence])).toEqual([[5, 4]])
  } finally {
    await spy.close()
    await s.close()
  }
})
