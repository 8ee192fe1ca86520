import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { connect, type NatsConnection } from '@nats-io/transport-node'
import { drizzle } from 'drizzle-orm/postgres-js'
import postgres from 'postgres'
import type { Db } from '../../../core/db/client'
import * as schema from '../../../core/db/schema'
import { createLogger } from '../../../core/logger'
import { ensureStreams } from '../../../core/nats'
import { createTestEnv, TEST_NATS_URL, type TestEnv } from '../../../core/testing/env'
import { WsClient, until } from '../../../test/e2e/harness'
import { CLOSE } from '../realtime/close-codes'
import { createKeyStore } from '../auth/keys'
import { startApi, type RunningApi } from '../server'
import { UPGRADE_HEADERS } from '../test-support'

/**
 * Failed credential checks per client address, on a real API node whose database counts the key
 * lookups it is asked for: past the budget an address is refused (429, Retry-After) with no lookup.
 */
describe('failed credential checks per address', () => {
  // 60 a minute: a burst of 60, then one a second (the refusals below wait about 1 s).
  const BUDGET = 60
  let env: TestEnv
  let client: ReturnType<typeof postgres>
  let nc: NatsConnection
  let api: RunningApi
  let base: string
  let goodKey: string
  let drizzleDb: Db
  /** `select ... from api_keys where digest = ...` statements sent to Postgres (KeyStore.lookup). */
  let lookups = 0

  beforeAll(async () => {
    env = await createTestEnv({
      PORT: '0',
      HOST: '127.0.0.1',
      FANFARE_TRUSTED_PROXIES: '127.0.0.1/32',
      FANFARE_AUTH_FAILURES_PER_MINUTE: String(BUDGET),
      // The upgrades below must meet this limit only, not the connect rate.
      FANFARE_IP_CONNECT_BURST: '1000',
    })
    client = postgres(env.vars.DATABASE_URL, { max: 4, onnotice: () => {} })
    const db = drizzle(client, {
      schema,
      logger: { logQuery: (query) => void (/from "api_keys" where "api_keys"."digest" = /.test(query) && lookups++) },
    }) as unknown as Db
    nc = await connect({ servers: TEST_NATS_URL })
    await ensureStreams(nc, env.config)
    api = await startApi({ config: env.config, db, nc, logger: createLogger('silent') })
    base = `http://127.0.0.1:${api.port}`
    drizzleDb = db
    const keys = createKeyStore({ db })
    goodKey = (await keys.create({ name: 'reader', scopes: ['admin:read'], createdBy: 'test' })).key
    await keys.stop()
  })
  afterAll(async () => {
    await api?.stop()
    await nc?.close().catch(() => {})
    await client?.end({ timeout: 5 })
    await env?.cleanup()
  })

  // Every test poses as its own clients behind the trusted proxy (X-Forwarded-For).
  const guess = () => `ffk_${crypto.randomUUID().replaceAll('-', '')}`
  const rest = (ip: string, authorization?: string) =>
    fetch(`${base}/admin/keys`, { headers: { 'x-forwarded-for': ip, ...(authorization ? { authorization } : {}) } })
  const upgrade = (ip: string, token: string) =>
    fetch(`${base}/v1/ws?token=${encodeURIComponent(token)}`, { headers: { ...UPGRADE_HEADERS, 'x-forwarded-for': ip } })
  const expectRefused = async (res: Response) => {
    expect(res.status).toBe(429)
    const error = ((await res.json()) as any).error
    expect(error.code).toBe('rate_limited')
    expect(error.details.retryAfterMs).toBeGreaterThan(0)
    expect(error.details.retryAfterMs).toBeLessThanOrEqual(1000) // one failure back at 60 a minute
    expect(res.headers.get('retry-after')).toBe('1')
    return error.details.retryAfterMs as number
  }

  test('REST: past the budget every credential of the address is refused with no key lookup; other addresses and anonymous calls are not; after the wait it works again', async () => {
    const ip = '203.0.113.1'
    const before = lookups
    for (let i = 0; i < BUDGET; i++) {
      const res = await rest(ip, `Bearer ${guess()}`)
      expect(res.status).toBe(401)
      expect(((await res.json()) as any).error.code).toBe('invalid_token')
    }
    expect(lookups - before).toBe(BUDGET) // each distinct guess cost one query
    const flood = lookups
    await expectRefused(await rest(ip, `Bearer ${guess()}`))
    for (let i = 0; i < 50; i++) expect((await rest(ip, `Bearer ${guess()}`)).status).toBe(429)
    // Malformed headers and bootstrap-token guesses are credential checks too.
    expect((await rest(ip, 'Basic abc')).status).toBe(429)
    expect((await rest(ip, 'Bearer not-a-key')).status).toBe(429)
    // Any credential: the good key too, from this address.
    const wait = await expectRefused(await rest(ip, `Bearer ${goodKey}`))
    expect(lookups).toBe(flood)

    // Another address with the good key: unaffected. The refusals are counted.
    expect((await rest('203.0.113.2', `Bearer ${goodKey}`)).status).toBe(200)
    const metrics = await (await fetch(`${base}/metrics`, { headers: { authorization: `Bearer ${goodKey}`, 'x-forwarded-for': '203.0.113.2' } })).text()
    expect(metrics).toMatch(/fanfare_rate_limited_total\{what="auth",caller="address"\} 54/)
    // No credential: nothing to refuse (this route needs one: 401, not 429).
    const anonymous = await rest(ip)
    expect(anonymous.status).toBe(401)
    expect((await fetch(`${base}/v1/leaderboards/x`, { headers: { 'x-forwarded-for': ip } })).status).not.toBe(429)

    await Bun.sleep(wait + 20)
    expect((await rest(ip, `Bearer ${goodKey}`)).status).toBe(200)
    // Successes cost nothing: the one failure that came back is still there to spend, then refused again.
    expect((await rest(ip, `Bearer ${goodKey}`)).status).toBe(200)
    expect((await rest(ip, `Bearer ${guess()}`)).status).toBe(401)
    await expectRefused(await rest(ip, `Bearer ${guess()}`))
  })

  test('WebSocket upgrade: past the budget 429 with Retry-After before the upgrade, with no key lookup; another address connects', async () => {
    const ip = '203.0.113.3'
    const before = lookups
    for (let i = 0; i < BUDGET; i++) expect((await upgrade(ip, guess())).status).toBe(401)
    expect(lookups - before).toBe(BUDGET)
    const flood = lookups
    await expectRefused(await upgrade(ip, guess()))
    for (let i = 0; i < 50; i++) expect((await upgrade(ip, guess())).status).toBe(429)
    const wait = await expectRefused(await upgrade(ip, goodKey))
    expect(lookups).toBe(flood)

    const other = await WsClient.open(`${base.replace('http:', 'ws:')}/v1/ws?token=${goodKey}`, { 'x-forwarded-for': '203.0.113.4' })
    other.send({ op: 'ping', ref: 'p' })
    expect((await other.reply('p')).op).toBe('pong')
    other.close()
    // Without a token the address still connects (anonymous viewers are allowed here).
    const anonymous = await WsClient.open(`${base.replace('http:', 'ws:')}/v1/ws`, { 'x-forwarded-for': ip })
    anonymous.close()

    await Bun.sleep(wait + 20)
    const back = await WsClient.open(`${base.replace('http:', 'ws:')}/v1/ws?token=${goodKey}`, { 'x-forwarded-for': ip })
    back.close()
  })

  test("an expired key is no guess: 401 key_expired, never charged to the address, so a game server still using it does not lock out the other keys of its host", async () => {
    const ip = '203.0.113.6'
    const keys = createKeyStore({ db: drizzleDb })
    const expiring = await keys.create({ name: 'old match server', scopes: ['admin:read'], createdBy: 'test', expiresAt: new Date(Date.now() + 300) })
    await keys.stop()
    await Bun.sleep(400)
    for (let i = 0; i < BUDGET + 5; i++) {
      const res = await rest(ip, `Bearer ${expiring.key}`)
      const error = ((await res.json()) as any).error
      expect([res.status, error.code]).toEqual([401, 'key_expired'])
    }
    expect((await upgrade(ip, expiring.key)).status).toBe(401)
    // The host's other key still works.
    expect((await rest(ip, `Bearer ${goodKey}`)).status).toBe(200)
  })

  test('auth frames share the budget: refused with an error frame and retryAfterMs, no lookup, then closed 4029 with the wait', async () => {
    const ip = '203.0.113.5'
    for (let i = 0; i < BUDGET; i++) expect((await rest(ip, `Bearer ${guess()}`)).status).toBe(401)
    const ws = await WsClient.open(`${base.replace('http:', 'ws:')}/v1/ws`, { 'x-forwarded-for': ip })
    // The budget refills one guess a second: on a loaded machine the guesses above can take longer,
    // and the refill would let the frame's guess through. Spent again just before it (a 429 says so).
    for (let i = 0; i < 10 && (await rest(ip, `Bearer ${guess()}`)).status !== 429; i++);
    const flood = lookups
    ws.send({ op: 'auth', ref: 'a', token: guess() })
    const refused = await ws.reply('a')
    expect([refused.op, refused.error.code]).toEqual(['error', 'rate_limited'])
    expect(refused.error.retryAfterMs).toBeGreaterThan(0)
    expect(lookups).toBe(flood)
    const closed = await until('closed', () => ws.closed)
    expect(closed.code).toBe(CLOSE.RATE_LIMITED)
    expect(closed.reason).toMatch(/^rate_limited: reconnect after \d+ ms$/)

    await Bun.sleep(refused.error.retryAfterMs + 20)
    const again = await WsClient.open(`${base.replace('http:', 'ws:')}/v1/ws`, { 'x-forwarded-for': ip })
    again.send({ op: 'auth', ref: 'b', token: goodKey })
    expect((await again.reply('b')).op).toBe('authed')
    again.close()
  })
})
