import { afterAll, beforeAll, expect, test } from 'bun:test'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { connect, type NatsConnection } from '@nats-io/transport-node'
import { createLogger } from './logger'
import { createSubscriptionWatch } from './nats-subscriptions'
import { freePort } from './process'
import { until } from './testing/wait'
import { privateNats, type PrivateNats } from '../test/cluster/private-nats'

/**
 * The watch against a private nats-server whose config the test rewrites and reloads: the one
 * thing that ends a subscription with a permissions violation while a process runs.
 */
let nats: PrivateNats
const storeDir = mkdtempSync(join(tmpdir(), 'fanfare-subscription-watch-'))
const users = [
  { user: 'sender', password: 'pw' },
  { user: 'watched', password: 'pw' } as { user: string; password: string; permissions?: string },
]
const deny = (permissions?: string) => {
  users[1] = { user: 'watched', password: 'pw', ...(permissions ? { permissions } : {}) }
  return nats.reload({ users })
}
let sender: NatsConnection
let watched: NatsConnection

beforeAll(async () => {
  nats = privateNats({ port: freePort(), storeDir, users })
  await nats.start()
  sender = await connect({ servers: nats.url, user: 'sender', pass: 'pw' })
  watched = await connect({ servers: nats.url, user: 'watched', pass: 'pw', maxReconnectAttempts: -1, reconnectTimeWait: 100 })
})
afterAll(async () => {
  await watched?.close()
  await sender?.close()
  await nats?.stop()
  rmSync(storeDir, { recursive: true, force: true })
})

/** Publishes `text` until the watched subscription has received it (core NATS: a message sent before the SUB arrived is lost). */
const deliver = async (subject: string, got: string[], text: string, timeoutMs = 3_000) =>
  until(`${text} to arrive`, async () => {
    sender.publish(subject, text)
    await sender.flush()
    await Bun.sleep(20)
    return got.includes(text)
  }, timeoutMs, 0)

test('denied by a reload: listed (since when, essential), onDenied once; granted again: onRestored once, messages arrive again, nothing listed', async () => {
  const got: string[] = []
  const calls: string[] = []
  const watch = createSubscriptionWatch({ nc: watched, logger: createLogger('silent'), retryMs: 100 })
  watch.subscribe('w.control.revocations', { name: 'revocations', onMessage: (m) => got.push(m.string()), onDenied: () => calls.push('denied'), onRestored: () => calls.push('restored') })
  watch.subscribe('w.other', { name: 'other', essential: false, onMessage: () => {} })
  await deliver('w.control.revocations', got, 'before')

  await deny('{ subscribe: { deny: ["w.control.>"] } }')
  await until('the denial to be listed', () => watch.denied().length === 1, 3_000)
  expect(watch.denied()).toEqual([{ name: 'revocations', subject: 'w.control.revocations', since: expect.any(String), essential: true }])
  // Several retries are refused meanwhile: still one denial, one onDenied.
  await Bun.sleep(500)
  expect(calls).toEqual(['denied'])
  sender.publish('w.control.revocations', 'while-denied')
  await sender.flush()

  await deny()
  await until('the subscription to be let through', () => watch.denied().length === 0, 3_000)
  expect(calls).toEqual(['denied', 'restored'])
  await deliver('w.control.revocations', got, 'after')
  expect(got).not.toContain('while-denied')
  watch.stop()
}, 30_000)

test('a non-essential subscription is listed as such; unsubscribed while denied, it is no longer listed nor retried', async () => {
  const watch = createSubscriptionWatch({ nc: watched, logger: createLogger('silent'), retryMs: 100 })
  const sub = watch.subscribe('w.advisory.x', { name: 'consumer_deleted', essential: false, onMessage: () => {} })
  await deny('{ subscribe: { deny: ["w.advisory.>"] } }')
  await until('the denial to be listed', () => watch.denied().length === 1, 3_000)
  expect(watch.denied()[0].essential).toBe(false)
  sub.unsubscribe()
  expect(watch.denied()).toEqual([])
  // Granted again after several retry periods: nothing subscribed again (a request finds no one).
  await deny()
  await Bun.sleep(400)
  const err = await sender.request('w.advisory.x', '', { timeout: 1_000 }).catch((e) => e)
  expect(err).toBeInstanceOf(Error)
  expect(String(err.message)).toMatch(/no responders/i)
  watch.stop()
}, 30_000)

test('NATS restarting with the denial in place: the subscription nats.js makes again is denied and listed; granted after, restored', async () => {
  const got: string[] = []
  const watch = createSubscriptionWatch({ nc: watched, logger: createLogger('silent'), retryMs: 100 })
  watch.subscribe('w.presence.node', { name: 'presence', onMessage: (m) => got.push(m.string()) })
  await deliver('w.presence.node', got, 'before')
  await nats.stop()
  // Written while the server is down (reload then waits in vain for the server to say so): the next start reads it.
  await deny('{ subscribe: { deny: ["w.presence.>"] } }').catch(() => {})
  await nats.start()
  await until('the denial after the reconnect to be listed', () => watch.denied().length === 1, 10_000)
  await deny()
  await until('the subscription to be let through', () => watch.denied().length === 0, 5_000)
  await deliver('w.presence.node', got, 'after', 5_000)
  watch.stop()
}, 60_000)
