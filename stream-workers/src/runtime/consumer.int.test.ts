import { afterAll, beforeAll, expect, test } from 'bun:test'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { AckPolicy, jetstreamManager, JetStreamApiError, JetStreamError, type JetStreamManager } from '@nats-io/jetstream'
import { connect, type NatsConnection } from '@nats-io/transport-node'
import { freePort } from '../../../core/process'
import { consumerName } from '../../../core/projections'
import { TEST_NATS_URL } from '../../../core/testing/env'
import { privateNats } from '../../../test/cluster/private-nats'
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

  const { name } = await createOwnershipConsumer(nc, jsm, { stream, projection: 'chat', partition: 0, token: 3, filter: `${stream}.x`, checkpoint: 0, batchSize: 100 })
  await nc.flush()
  lists.unsubscribe()
  expect(name).toBe(consumerName('chat', 0, 3))
  expect((await consumerNames(nc, jsm, stream)).sort()).toEqual([...kept, name].sort())
  expect(listed).toBe(0)
})

/** The offsets of the CONSUMER.NAMES requests for `stream` seen on `subject` while `run` runs. */
async function namesRequests(on: NatsConnection, subject: string, run: () => Promise<unknown>): Promise<number[]> {
  const offsets: number[] = []
  const spy = on.subscribe(subject, { callback: (_err, m) => void offsets.push(m.json<{ offset: number }>().offset) })
  await on.flush()
  try {
    await run()
    await on.flush()
  } finally {
    spy.unsubscribe()
  }
  return offsets
}

test('consumer names come page after page: plain requests on $JS.API.CONSUMER.NAMES.<stream>, by offset', async () => {
  // nats-server answers 1024 names a page.
  const many = Array.from({ length: 1030 }, (_, i) => `many_${i}`)
  // 100 at a time: 1030 at once made the shared test server time some out on a busy machine.
  for (let i = 0; i < many.length; i += 100) await Promise.all(many.slice(i, i + 100).map(add))
  let names: string[] = []
  const offsets = await namesRequests(nc, `$JS.API.CONSUMER.NAMES.${stream}`, async () => (names = await consumerNames(nc, jsm, stream)))
  expect(names.filter((n) => n.startsWith('many_')).sort()).toEqual(many.sort())
  expect(new Set(names).size).toBe(names.length)
  expect(offsets).toEqual([0, 1024])
}, 60_000)

test("JetStream's error answer is a JetStreamApiError with its code, as the manager's own requests", async () => {
  const err = await consumerNames(nc, jsm, `${stream}_NONE`).catch((e: unknown) => e)
  expect(err).toBeInstanceOf(JetStreamApiError)
  expect((err as JetStreamApiError).code).toBe(10059)
  expect((err as Error).message).toContain('stream not found')
})

test("with a manager made for a JetStream domain, the requests go to that domain's API ($JS.<domain>.API)", async () => {
  const storeDir = mkdtempSync(join(tmpdir(), 'fanfare-consumer-domain-'))
  const server = privateNats({ port: freePort(), storeDir, domain: 'edge' })
  await server.start()
  const edge = await connect({ servers: server.url })
  try {
    const edgeJsm = await jetstreamManager(edge, { domain: 'edge' })
    await edgeJsm.streams.add({ name: 'D', subjects: ['d.>'] })
    for (const name of ['one', 'two']) await edgeJsm.consumers.add('D', { durable_name: name, ack_policy: AckPolicy.All })
    expect((await consumerNames(edge, edgeJsm, 'D')).sort()).toEqual(['one', 'two'])
    // (nats-server answers $JS.edge.API through an import, which a plain subscriber does not see.)
    // The domain's prefix is what is asked: a domain nobody serves has no responder.
    const elsewhere = await consumerNames(edge, await jetstreamManager(edge, { domain: 'elsewhere', checkAPI: false }), 'D').catch((e: unknown) => e)
    expect(elsewhere).toBeInstanceOf(JetStreamError)
    expect((elsewhere as Error).message).toBe('jetstream is not enabled')
  } finally {
    await edge.close()
    await server.stop()
    rmSync(storeDir, { recursive: true, force: true })
  }
}, 30_000)
