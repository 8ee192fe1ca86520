import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { createLogger } from '../../../core/logger'
import { until, WsClient } from '../../../test/e2e/harness'
import { createClient } from '../../../client/src/client'
import { CLOSE } from '../realtime/close-codes'
import { startApi, type RunningApi } from '../server'
import { startTestNode, UPGRADE_HEADERS, type TestNode } from '../test-support'
import { mintUserToken } from './mint'

const OLD = 'rotation-test-old-secret-0123456789abcdef'
const NEW = 'rotation-test-new-secret-0123456789abcdef'
const OTHER = 'rotation-test-someone-elses-secret-0123456789'

/**
 * FANFARE_JWT_SECRET is rotated during a rolling restart (README "Rotating the JWT secret"): a node
 * with the new secret as FANFARE_JWT_SECRET and the old as FANFARE_JWT_PREVIOUS_SECRET accepts the
 * tokens the game's auth minted before the switch, which stay in clients' hands until they expire.
 * Without it a client holding one got 4003 from an updated node, terminal for the SDK.
 */
describe('rotating the JWT secret', () => {
  let node: TestNode
  /** Mid-rotation: NEW current, OLD previous. */
  let rotating: RunningApi
  /** After the rotation: NEW only. */
  let rotated: RunningApi
  const base = (api: RunningApi) => `http://127.0.0.1:${api.port}`
  const wsUrl = (api: RunningApi) => `ws://127.0.0.1:${api.port}/v1/ws`

  beforeAll(async () => {
    // Failed credentials are counted per address; X-Forwarded-For from the test gives each test its own.
    node = await startTestNode({
      FANFARE_JWT_SECRET: NEW,
      FANFARE_JWT_PREVIOUS_SECRET: OLD,
      FANFARE_AUTH_FAILURES_PER_MINUTE: '3',
      FANFARE_TRUSTED_PROXIES: '127.0.0.1',
    })
    rotating = node.api
    rotated = await startApi({ config: { ...node.env.config, FANFARE_JWT_PREVIOUS_SECRET: undefined }, db: node.database.db, nc: node.nc, logger: createLogger('silent') })
  })
  afterAll(async () => {
    await rotated?.stop()
    await node?.close()
  })

  const get = (api: RunningApi, token: string, address = '198.51.100.1') =>
    fetch(`${base(api)}/v1/leaderboards/b`, { headers: { authorization: `Bearer ${token}`, 'x-forwarded-for': address } })
  const upgrade = (api: RunningApi, token: string) =>
    fetch(`${base(api)}/v1/ws?token=${token}`, {
      headers: { ...UPGRADE_HEADERS, 'x-forwarded-for': '198.51.100.2' },
    })
  const codeOf = async (res: Response) => [res.status, ((await res.json()) as any).error?.code]
  /** Signs in on the socket (?token=) and proves who it is: only that user may subscribe to user:<sub>. */
  const signedIn = async (c: WsClient, sub: string) => {
    c.send({ op: 'subscribe', ref: 'me', channel: `user:${sub}` })
    await until(`user:${sub} snapshot`, () => c.of(`user:${sub}`).length === 1 || c.frames.find((f) => f.ref === 'me' && f.op === 'error'))
    expect(c.frames.find((f) => f.ref === 'me' && f.op === 'error')).toBeUndefined()
  }

  test("mid-rotation, a token of the previous secret is accepted over REST, the upgrade, an auth frame and by the SDK; the current secret's too", async () => {
    const old = await mintUserToken(OLD, { sub: 'ann' })
    const current = await mintUserToken(NEW, { sub: 'bob' })
    expect((await get(rotating, old)).status).toBe(200)
    expect((await get(rotating, current)).status).toBe(200)

    const viaQuery = await WsClient.open(`${wsUrl(rotating)}?token=${old}`)
    await signedIn(viaQuery, 'ann')
    viaQuery.close()

    const viaFrame = await WsClient.open(wsUrl(rotating))
    viaFrame.send({ op: 'auth', ref: 'auth', token: old })
    expect((await viaFrame.reply('auth')).op).toBe('authed')
    await signedIn(viaFrame, 'ann')
    // A refresh with a token of the new secret keeps the socket: the same user.
    viaFrame.send({ op: 'auth', ref: 'renew', token: await mintUserToken(NEW, { sub: 'ann' }) })
    expect((await viaFrame.reply('renew')).op).toBe('authed')
    expect(viaFrame.closed).toBeUndefined()
    viaFrame.close()

    // The outside review's case: the SDK with a token of the old secret, on an updated node.
    const client = createClient({ urls: [wsUrl(rotating)], token: async () => old, backoff: { minMs: 100, maxMs: 300 } })
    try {
      await until('the SDK connected', () => client.status.state === 'connected' || client.status.state === 'closed', 10_000)
      expect(client.status).toMatchObject({ state: 'connected', principal: 'u:ann' })
    } finally {
      client.close()
    }
  })

  test('mid-rotation, a token of the previous secret is still checked like any other: expired is token_expired, a bad claim invalid_token', async () => {
    const expired = await mintUserToken(OLD, { sub: 'ann', issuedAt: Math.floor(Date.now() / 1000) - 7200, ttlSeconds: 3600 })
    expect(await codeOf(await get(rotating, expired, '198.51.100.3'))).toEqual([401, 'token_expired'])
    const badSub = await mintUserToken(OLD, { sub: 'two words' })
    expect(await codeOf(await get(rotating, badSub, '198.51.100.3'))).toEqual([401, 'invalid_token'])
  })

  test('a token of neither secret is refused as before: 401 invalid_token, 4003 in a frame, and each charged to its address as a failed credential', async () => {
    const stranger = await mintUserToken(OTHER, { sub: 'mallory' })
    expect(await codeOf(await upgrade(rotating, stranger))).toEqual([401, 'invalid_token'])
    const c = await WsClient.open(wsUrl(rotating), { 'x-forwarded-for': '198.51.100.4' })
    c.send({ op: 'auth', ref: 'auth', token: stranger })
    expect((await c.reply('auth')).error.code).toBe('invalid_token')
    await until('socket closed', () => c.closed, 5000)
    expect(c.closed!.code).toBe(CLOSE.FORBIDDEN)

    // Tokens of the previous secret cost the address nothing; three of neither spend its budget (3 a minute).
    const address = '198.51.100.5'
    const old = await mintUserToken(OLD, { sub: 'ann' })
    for (let i = 0; i < 5; i++) expect((await get(rotating, old, address)).status).toBe(200)
    for (let i = 0; i < 3; i++) expect(await codeOf(await get(rotating, stranger, address))).toEqual([401, 'invalid_token'])
    expect(await codeOf(await get(rotating, old, address))).toEqual([429, 'rate_limited'])
  })

  test('once the previous secret is removed its tokens are refused (401 invalid_token, close 4003); the current secret\'s are accepted', async () => {
    const old = await mintUserToken(OLD, { sub: 'ann' })
    expect(await codeOf(await get(rotated, old, '198.51.100.6'))).toEqual([401, 'invalid_token'])
    expect(await codeOf(await upgrade(rotated, old))).toEqual([401, 'invalid_token'])
    const c = await WsClient.open(wsUrl(rotated))
    c.send({ op: 'auth', ref: 'auth', token: old })
    expect((await c.reply('auth')).error.code).toBe('invalid_token')
    await until('socket closed', () => c.closed, 5000)
    expect(c.closed!.code).toBe(CLOSE.FORBIDDEN)

    const current = await mintUserToken(NEW, { sub: 'ann' })
    expect((await get(rotated, current, '198.51.100.6')).status).toBe(200)
    const fresh = await WsClient.open(`${wsUrl(rotated)}?token=${current}`)
    await signedIn(fresh, 'ann')
    fresh.close()
  })
})
