import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { exportJWK, generateKeyPair, SignJWT, type JWK } from 'jose'
import { connectPostgres } from '../../../core/db/client'
import { createLogger } from '../../../core/logger'
import { connectNats, ensureStreams } from '../../../core/nats'
import { createTestEnv } from '../../../core/testing/env'
import { until, WsClient } from '../../../test/e2e/harness'
import { createClient } from '../../../client/src/client'
import { CLOSE } from '../realtime/close-codes'
import { freePort } from '../../../core/process'
import { tcpProxy } from '../../../core/testing/tcp-proxy'
import { startApi, type RunningApi } from '../server'
import { startTestNode, UPGRADE_HEADERS, type TestNode } from '../test-support'
import { createKeyStore } from './keys'
import { mintUserToken } from './mint'

/**
 * The game's auth service serving FANFARE_JWKS_URL is down (restarting, unreachable, answering
 * errors): Fanfare cannot check a JWKS token, which says nothing against the token. Callers are
 * told to retry (503 `auth_unavailable`, a retryable close), never that their good token is
 * invalid (401 `invalid_token`, close 4003: terminal, the SDK stops for good), and their address is
 * not charged failed credentials for it (or a shared address is locked out once the service is back).
 */
describe('the JWKS cannot be fetched', () => {
  let node: TestNode
  let jwks: ReturnType<typeof Bun.serve>
  let base: string
  let ws: string
  let down = true
  const keys: JWK[] = []
  let sign: (sub: string) => Promise<string>

  beforeAll(async () => {
    jwks = Bun.serve({ port: 0, hostname: '127.0.0.1', fetch: () => (down ? new Response('upstream restarting', { status: 503 }) : Response.json({ keys })) })
    const { publicKey, privateKey } = await generateKeyPair('ES256', { extractable: true })
    keys.push({ ...(await exportJWK(publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' })
    sign = (sub) => new SignJWT({}).setProtectedHeader({ alg: 'ES256', kid: 'k1' }).setSubject(sub).setIssuedAt().setExpirationTime('10m').sign(privateKey)
    // Three failed credentials a minute per address: the outage must not spend them.
    node = await startTestNode({ FANFARE_JWKS_URL: `http://127.0.0.1:${jwks.port}/jwks.json`, FANFARE_AUTH_FAILURES_PER_MINUTE: '3' })
    base = node.base
    ws = node.wsUrl
  })
  afterAll(async () => {
    await node?.close()
    jwks?.stop(true)
  })

  const get = (token: string) => fetch(`${base}/v1/leaderboards/b`, { headers: { authorization: `Bearer ${token}` } })

  test("a refresh that cannot be checked keeps the socket and its identity: the token it holds is still good until it expires", async () => {
    // Signed in with an HS256 token (the secret works without the JWKS), refreshed with a JWKS one.
    down = true
    const c = await WsClient.open(`${ws}?token=${await mintUserToken(node.env.vars.FANFARE_JWT_SECRET, { sub: 'bob', ttlSeconds: 600 })}`)
    // First in this file: the node has never fetched the set, so the token's key must be fetched.
    const { privateKey } = await generateKeyPair('ES256', { extractable: true })
    const rotated = await new SignJWT({}).setProtectedHeader({ alg: 'ES256', kid: 'k2' }).setSubject('bob').setIssuedAt().setExpirationTime('10m').sign(privateKey)
    c.send({ op: 'auth', ref: 'renew', token: rotated })
    expect((await c.reply('renew')).error.code).toBe('auth_unavailable')
    c.send({ op: 'subscribe', ref: 's', channel: 'user:bob' })
    await until('user:bob snapshot', () => c.of('user:bob').length === 1)
    expect(c.frames.find((f) => f.ref === 's')).toBeUndefined() // no error: still bob
    expect(c.closed).toBeUndefined()
    c.close()
  })

  test('REST, the upgrade and auth frames are told to retry (503 auth_unavailable, close 1013), not that the token is invalid; once the service is back the same token works', async () => {
    down = true
    const token = await sign('ann')
    // More tries than the address's failed-credential budget: none is charged.
    for (let i = 0; i < 5; i++) {
      const res = await get(token)
      const body = (await res.json()) as any
      expect([res.status, body.error.code]).toEqual([503, 'auth_unavailable'])
      expect(res.headers.get('retry-after')).toBe('1')
      expect(body.error.message).not.toContain('127.0.0.1') // where the auth service lives is not the caller's business
    }
    const upgrade = await fetch(`${base}/v1/ws?token=${token}`, { headers: UPGRADE_HEADERS })
    expect([upgrade.status, ((await upgrade.json()) as any).error.code]).toEqual([503, 'auth_unavailable'])
    expect(upgrade.headers.get('retry-after')).toBe('1')

    // The SDK signs in with an auth frame: refused for now, closed with a code it retries on.
    const c = await WsClient.open(ws)
    c.send({ op: 'auth', ref: 'auth', token })
    expect((await c.reply('auth')).error).toMatchObject({ code: 'auth_unavailable', retryAfterMs: 1000 })
    await until('socket closed', () => c.closed, 5000)
    expect(c.closed!.code).toBe(CLOSE.TRY_AGAIN_LATER)

    // The SDK keeps trying through the outage (on 4003 it stopped for good), and is in once it ends.
    const client = createClient({ urls: [ws], token: async () => token, backoff: { minMs: 100, maxMs: 300 } })
    try {
      await until('the SDK retried after a 1013', () => client.status.state === 'reconnecting' && client.status.reason.code === CLOSE.TRY_AGAIN_LATER, 5000)
      down = false
      await until('the SDK connected', () => client.status.state === 'connected', 10_000)
      expect(client.status).toMatchObject({ state: 'connected', principal: 'u:ann' })
    } finally {
      client.close()
    }
    expect((await get(token)).status).toBe(200)
  })
})

/**
 * The same for an API key while Postgres is away: a key not in the node's cache cannot be looked
 * up. The upgrade answers 503 `database_unavailable`; an `auth` frame an error frame with it and
 * close 1013 (it was 4003, terminal: a game server's SDK client stopped for good over a blip).
 */
describe('an API key cannot be looked up (Postgres away)', () => {
  test('an auth frame with the key: database_unavailable and close 1013, not 4003; once Postgres is back the key signs in', async () => {
    const env = await createTestEnv({ PORT: '0', HOST: '127.0.0.1' })
    const url = new URL(env.vars.DATABASE_URL)
    const target = { host: url.hostname, port: Number(url.port || 5432) }
    const port = freePort()
    // Postgres away: the proxy closed, so connecting to it is refused at once.
    let proxy = tcpProxy({ port, target })
    url.host = `127.0.0.1:${port}`
    const direct = await connectPostgres(env.vars.DATABASE_URL, { max: 1 })
    const database = await connectPostgres(url.toString(), { max: 2 })
    const nc = await connectNats(env.vars.NATS_URL, 'key-lookup-outage-test')
    let api: RunningApi | undefined
    try {
      await ensureStreams(nc, env.config)
      api = await startApi({ config: env.config, db: database.db, nc, logger: createLogger('silent') })
      const keys = createKeyStore({ db: direct.db })
      const { key } = await keys.create({ name: 'game server', scopes: ['publish:score.submitted'], createdBy: 'test' })
      await keys.stop()
      const ws = `ws://127.0.0.1:${api.port}/v1/ws`
      proxy.close()
      const c = await WsClient.open(ws)
      c.send({ op: 'auth', ref: 'auth', token: key })
      expect((await c.reply('auth', 20_000)).error.code).toBe('database_unavailable')
      await until('socket closed', () => c.closed, 5000)
      expect(c.closed!.code).toBe(CLOSE.TRY_AGAIN_LATER)
      proxy = tcpProxy({ port, target })
      await until(
        'the key signs in',
        async () => {
          const d = await WsClient.open(ws)
          d.send({ op: 'auth', ref: 'auth', token: key })
          const answer = await d.reply('auth', 20_000)
          d.close()
          return answer.op === 'authed' ? answer : undefined
        },
        30_000,
        200,
      )
    } finally {
      await api?.stop()
      await nc.close()
      await database.close()
      await direct.close()
      proxy.close()
      await env.cleanup()
    }
  }, 90_000)
})

