import { afterAll, beforeAll, expect, test } from 'bun:test'
import { AckPolicy, jetstreamManager, type JetStreamManager } from '@nats-io/jetstream'
import { connect, type NatsConnection } from '@nats-io/transport-node'
import { consumerName } from '../../../core/projections'
import { TEST_NATS_URL } from '../../../core/testing/env'
import { consumerNames, createOwnershipConsumer } from './consumer'

const stream = `T_OWNERSHIP_${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`.toUpperCase()
let nc: NatsConnection
let jsm: JetStreamManager
beforeAll(async () => {
  nc = await connect({ servers: TEST_NATS_URL })
  jsm = await jetstreamManager(nc)
  await jsm.streams.add({ name: stream, subjects: [`${stream}.>`] })
})
afterAll(async () => {
  await jsm?.streams.delete(stream).catch(() => {})
  await nc?.close()
})

const add = (name: string) => jsm.consumers.add(stream, { durable_name: name, ack_policy: AckPolicy.All, filter_subject: `${stream}.x` })

test("opening an ownership's consumer deletes the older ownerships' of its partition by name, never asking for every consumer's info", async () => {
  // Older ownerships of partition 0, a newer one, another partition's and another projection's.
  const kept = [consumerName('chat', 0, 9), consumerName('chat', 1, 2), consumerName('polls', 0, 1), 'other']
  for (const name of [consumerName('chat', 0, 1), consumerName('chat', 0, 2), ...kept]) await add(name)
  // Each consumer info costs nats-server a count of that consumer's pending messages, and every
  // runner opens its consumer this way: with infos, a worker's start asked for runners x consumers.
  const lists = nc.subscribe(`$JS.API.CONSUMER.LIST.${stream}`)
  let listed = 0
  void (async () => {
    for await (const _ of lists) listed++
  })()

  const name = await createOwnershipConsumer(jsm, { stream, projection: 'chat', partition: 0, token: 3, filter: `${stream}.x`, checkpoint: 0, batchSize: 100 })
  await nc.flush()
  lists.unsubscribe()
  expect(name).toBe(consumerName('chat', 0, 3))
  expect((await consumerNames(jsm, stream)).sort()).toEqual([...kept, name].sort())
  expect(listed).toBe(0)
})

test('consumer names come page after page', async () => {
  // nats-server answers 1024 names a page.
  const many = Array.from({ length: 1030 }, (_, i) => `many_${i}`)
  await Promise.all(many.map(add))
  const names = await consumerNames(jsm, stream)
  expect(names.filter((n) => n.startsWith('many_')).sort()).toEqual(many.sort())
  expect(new Set(names).size).toBe(names.length)
}, 60_000)
