import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { WsClient, until } from '../../../test/e2e/harness'
import { mintUserToken } from '../auth/mint'
import { startTestNode, UPGRADE_HEADERS, type TestNode } from '../test-support'

/** Refused upgrades are plain HTTP answers: fetch shows their status and body. */
const upgrade = (node: TestNode, headers: Record<string, string>, token?: string) =>
  fetch(`${node.base}/v1/ws${token ? `?token=${token}` : ''}`, { headers: { ...UPGRADE_HEADERS, ...headers } })

const errorOf = async (res: Response) => ((await res.json()) as any).error

describe('behind a trusted proxy (127.0.0.1/32 trusted): connections, connects and origins', () => {
  let node: TestNode
  beforeAll(async () => {
    node = await startTestNode({
      FANFARE_TRUSTED_PROXIES: '127.0.0.1/32',
      FANFARE_MAX_CONNECTIONS_PER_IP: '2',
      FANFARE_MAX_CONNECTIONS_PER_USER: '2',
      FANFARE_IP_CONNECTS_PER_SECOND: '1',
      FANFARE_IP_CONNECT_BURST: '3',
      FANFARE_ALLOWED_ORIGINS: 'https://game.example',
    })
  })
  afterAll(async () => {
    await node?.close()
  })
  // Every test poses as its own clients (X-Forwarded-For), so their counts never mix.
  const from = (ip: string, more: Record<string, string> = {}) => ({ 'x-forwarded-for': ip, ...more })
  const open = (ip: string, token?: string) => WsClient.open(`${node.wsUrl}${token ? `?token=${token}` : ''}`, from(ip))
  const closeAll = async (clients: WsClient[]) => {
    for (const c of clients) c.close()
    await until('closed', () => clients.every((c) => c.closed))
  }

  test('open sockets per client address, the address taken from X-Forwarded-For past the trusted proxy', async () => {
    // The client wrote 6.6.6.6 itself; the proxy appended the address it saw, 203.0.113.20.
    const a = await open('6.6.6.6, 203.0.113.20')
    const b = await open('203.0.113.20')
    const refused = await upgrade(node, from('7.7.7.7, 203.0.113.20'))
    expect(refused.status).toBe(429)
    expect(refused.headers.get('retry-after')).toBe('5')
    expect(await errorOf(refused)).toMatchObject({ code: 'too_many_connections', details: { retryAfterMs: 5000 } })
    const elsewhere = await open('203.0.113.21')
    await closeAll([a])
    const again = await until('a free place', async () => open('203.0.113.20').catch(() => undefined))
    await closeAll([b, elsewhere, again])
  })

  test('connects per second per address: a burst, then 429 with the wait before the upgrade', async () => {
    for (let i = 0; i < 3; i++) await closeAll([await open('203.0.113.30')])
    const refused = await upgrade(node, from('203.0.113.30'))
    expect(refused.status).toBe(429)
    expect(refused.headers.get('retry-after')).toBe('1')
    const error = await errorOf(refused)
    expect(error.code).toBe('rate_limited')
    expect(error.details.retryAfterMs).toBeGreaterThan(0)
    expect(error.details.retryAfterMs).toBeLessThanOrEqual(1000)
    await closeAll([await open('203.0.113.31')]) // another address is not held back
  })

  test('open sockets per user, by ?token at the upgrade and by an auth frame', async () => {
    const token = await mintUserToken(node.env.vars.FANFARE_JWT_SECRET, { sub: 'ann' })
    const a = await open('203.0.113.40', token)
    const b = await open('203.0.113.41', token)
    const refused = await upgrade(node, from('203.0.113.42'), token)
    expect(refused.status).toBe(429)
    expect((await errorOf(refused)).code).toBe('too_many_connections')
    // Anonymous first, then an auth frame as ann: refused in a frame, then closed with 4029.
    const late = await open('203.0.113.43')
    late.send({ op: 'auth', ref: 'a', token })
    expect((await late.reply('a')).error).toMatchObject({ code: 'too_many_connections', retryAfterMs: 5000 })
    await until('the close', () => late.closed)
    expect(late.closed!.code).toBe(4029)
    expect(late.closed!.reason).toMatch(/reconnect after 5000 ms/)
    await closeAll([a])
    const again = await until('a free place', async () => open('203.0.113.44', token).catch(() => undefined))
    await closeAll([b, again])
  })

  test('an upgrade from another Origin is 403 before anything else; the allowed one and none pass', async () => {
    const refused = await upgrade(node, from('203.0.113.50', { origin: 'https://evil.example' }))
    expect(refused.status).toBe(403)
    expect(await errorOf(refused)).toMatchObject({ code: 'origin_not_allowed', details: { origin: 'https://evil.example' } })
    const allowed = await WsClient.open(node.wsUrl, from('203.0.113.51', { origin: 'https://game.example' }))
    const none = await open('203.0.113.52')
    await closeAll([allowed, none])
  })

  test('REST and CORS preflights from another Origin are 403; the allowed one gets CORS headers', async () => {
    const evil = await fetch(`${node.base}/healthz`, { headers: { origin: 'https://evil.example' } })
    expect(evil.status).toBe(403)
    expect((await errorOf(evil)).code).toBe('origin_not_allowed')
    const preflight = (origin: string) =>
      fetch(`${node.base}/v1/events`, {
        method: 'OPTIONS',
        headers: { origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization, content-type' },
      })
    expect((await preflight('https://evil.example')).status).toBe(403)
    const ok = await preflight('https://game.example')
    expect(ok.status).toBe(204)
    expect(ok.headers.get('access-control-allow-origin')).toBe('https://game.example')
    expect(ok.headers.get('access-control-allow-methods')).toContain('POST')
    expect(ok.headers.get('access-control-allow-headers')).toContain('authorization')
    expect(ok.headers.get('access-control-allow-credentials')).toBeNull()
    const get = await fetch(`${node.base}/healthz`, { headers: { origin: 'https://game.example' } })
    expect(get.status).toBe(200)
    expect(get.headers.get('access-control-allow-origin')).toBe('https://game.example')
    expect((await fetch(`${node.base}/healthz`)).status).toBe(200) // no Origin: not a browser page
  })
})

describe('with no trusted proxy and no allowed origins set', () => {
  let node: TestNode
  beforeAll(async () => {
    node = await startTestNode({ FANFARE_MAX_CONNECTIONS_PER_IP: '3' })
  })
  afterAll(async () => {
    await node?.close()
  })

  test('X-Forwarded-For is ignored: every socket from 127.0.0.1 counts as 127.0.0.1, whatever it claims', async () => {
    const clients = await Promise.all(['1.1.1.1', '2.2.2.2', '3.3.3.3'].map((ip) => WsClient.open(node.wsUrl, { 'x-forwarded-for': ip })))
    const refused = await upgrade(node, { 'x-forwarded-for': '4.4.4.4' })
    expect(refused.status).toBe(429)
    expect((await errorOf(refused)).code).toBe('too_many_connections')
    for (const c of clients) c.close()
    await until('closed', () => clients.every((c) => c.closed))
  })

  test('any Origin is allowed, and CORS answers it', async () => {
    const get = await fetch(`${node.base}/healthz`, { headers: { origin: 'https://anywhere.example' } })
    expect(get.status).toBe(200)
    expect(get.headers.get('access-control-allow-origin')).toBe('https://anywhere.example')
    const c = await until('a free place', async () => WsClient.open(node.wsUrl, { origin: 'https://anywhere.example' }).catch(() => undefined))
    c.close()
  })
})
