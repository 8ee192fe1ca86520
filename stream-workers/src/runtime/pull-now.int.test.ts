import { afterAll, beforeAll, expect, test } from 'bun:test'
import { AckPolicy, jetstream, jetstreamManager, type JetStreamManager } from '@nats-io/jetstream'
import { connect, type NatsConnection } from '@nats-io/transport-node'
import { TEST_NATS_URL } from '../../../core/testing/env'
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
