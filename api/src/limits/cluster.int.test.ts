import { afterAll, afterEach, beforeAll, describe, expect, test } from 'bun:test'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { connect, type NatsConnection } from '@nats-io/transport-node'
import { loadConfig } from '../../../core/config'
import { connectPostgres, type Database } from '../../../core/db/client'
import { createLogger } from '../../../core/logger'
import { freePort } from '../../../core/process'
import { TEST_NATS_URL } from '../../../core/testing/env'
import { privateNats } from '../../../test/cluster/private-nats'
import { WsClient, until } from '../../../test/e2e/harness'
import { ANONYMOUS, type Principal } from '../auth/principal'
import { mintUserToken } from '../auth/mint'
import { createLimits, type Limits } from '.'
import { createAuthFailures } from './auth-failures'
import { startLimitsCluster } from './cluster'
import { createConnectionLimits, type ConnectionLimits } from './connections'
import { createRateLimits } from './rates'
import { startApi, type RunningApi } from '../server'
import { startTestNode, UPGRADE_HEADERS, type TestNode } from '../test-support'

/**
 * Limits per principal across two API nodes of one deployment (one prefix, one NATS): each node
 * checks locally and they share their counts (see LimitsCluster). Every test poses as its own
 * clients (X-Forwarded-For behind the trusted 127.0.0.1), so their counts never mix.
 */
describe('limits across two API nodes', () => {
  let a: TestNode
  let b: RunningApi
  let bNc: NatsConnection
  let bDb: Database
  const sockets: WsClient[] = []

  beforeAll(async () => {
    a = await startTestNode({
      FANFARE_TRUSTED_PROXIES: '127.0.0.1/32',
      FANFARE_MAX_CONNECTIONS_PER_USER: '4',
      FANFARE_MAX_CONNECTIONS_PER_IP: '100',
      // Slow refills, so that the counts below do not depend on how fast the machine is.
      FANFARE_USER_OPS_PER_SECOND: '1',
      FANFARE_USER_OPS_BURST: '20',
      FANFARE_AUTH_FAILURES_PER_MINUTE: '6',
      // A node silent for 1 s is lost (the least allowed), so the last test is short.
      FANFARE_PRESENCE_TTL_MS: '1000',
    })
    // A second node of the same deployment, on its own NATS connection (cut off in the last test).
    bNc = await connect({ servers: TEST_NATS_URL })
    bDb = await connectPostgres(a.env.vars.DATABASE_URL, { max: 2 })
    b = await startApi({ config: { ...a.env.config, PORT: 0 }, db: bDb.db, nc: bNc, logger: createLogger('silent') })
  })
  afterAll(async () => {
    sockets.forEach((s) => s.close())
    // b's NATS connection was closed under it (the last test): its stop may wait on NATS for good.
    await Promise.race([b?.stop(), Bun.sleep(3000)])
    await bNc?.close().catch(() => {})
    await bDb?.close()
    await a?.close()
  })

  const bBase = () => `http://127.0.0.1:${b.port}`
  const base = (n: 'a' | 'b') => (n === 'a' ? a.base : bBase())
  const limitsOf = (n: 'a' | 'b'): Limits | undefined => (n === 'a' ? a.api.limits : b.limits)
  const other = (n: 'a' | 'b') => (n === 'a' ? 'b' : 'a')
  /**
   * Waits until node `to` has heard everything node `from` counted so far (its deltas are sent at
   * once instead of at the next interval). Nothing to wait for where nodes share nothing.
   */
  const synced = async (from: 'a' | 'b') => {
    const c = limitsOf(from)?.cluster
    const to = limitsOf(other(from))?.cluster
    if (!c || !to) return
    const seq = c.flush()
    await until(`node ${other(from)} to hear node ${from}'s delta ${seq}`, () => to.heard(c.node) >= seq || undefined, 5000, 10)
  }
  const from = (ip: string) => ({ 'x-forwarded-for': ip })
  const open = async (n: 'a' | 'b', ip: string, token: string) => {
    const ws = await WsClient.open(`${base(n).replace('http', 'ws')}/v1/ws?token=${token}`, from(ip))
    sockets.push(ws)
    return ws
  }
  /**
   * Opens a socket (kept open, to count), or says why the upgrade is refused: a refused upgrade is
   * a plain HTTP answer, which the same upgrade by fetch shows.
   */
  const tryOpen = async (n: 'a' | 'b', ip: string, token: string): Promise<{ status: number; code?: string }> => {
    try {
      await open(n, ip, token)
      return { status: 101 }
    } catch {
      const res = await fetch(`${base(n)}/v1/ws?token=${token}`, { headers: { ...UPGRADE_HEADERS, ...from(ip) } })
      return { status: res.status, code: ((await res.json()) as any).error?.code }
    }
  }
  const closeAll = async (clients: WsClient[]) => {
    for (const c of clients) c.close()
    await until('closed', () => clients.every((c) => c.closed))
  }

  test("a user's sockets opened alternately on two nodes are refused at the cluster-wide limit, and admitted again after closing some", async () => {
    const token = await mintUserToken(a.env.vars.FANFARE_JWT_SECRET, { sub: 'c-ann' })
    const held: WsClient[] = []
    for (const n of ['a', 'b', 'a', 'b'] as const) {
      held.push(await open(n, '203.0.113.10', token))
      await synced(n)
    }
    // 2 open on each node, 4 in all: the limit. Both nodes refuse a fifth.
    for (const n of ['a', 'b'] as const) {
      const r = await tryOpen(n, '203.0.113.10', token)
      expect(r).toEqual({ status: 429, code: 'too_many_connections' })
    }
    // A socket signing in as the user by an `auth` frame is refused too.
    const late = await WsClient.open(`${bBase().replace('http', 'ws')}/v1/ws`, from('203.0.113.11'))
    sockets.push(late)
    late.send({ op: 'auth', ref: 'a', token })
    expect((await late.reply('a')).error).toMatchObject({ code: 'too_many_connections' })
    await until('the close', () => late.closed)
    expect(late.closed!.code).toBe(4029)

    // One closed on a: b admits one more (and then neither admits another).
    await closeAll([held[0]])
    await synced('a')
    expect(await tryOpen('b', '203.0.113.10', token)).toEqual({ status: 101 })
    await synced('b')
    expect(await tryOpen('a', '203.0.113.10', token)).toEqual({ status: 429, code: 'too_many_connections' })
    await closeAll(sockets.filter((s) => !s.closed))
  })

  test("one user's REST publishes spread over two nodes are refused (429 rate_limited) once the one shared budget is spent", async () => {
    const token = await mintUserToken(a.env.vars.FANFARE_JWT_SECRET, { sub: 'r-bea' })
    const post = (n: 'a' | 'b', id: string) =>
      fetch(`${base(n)}/v1/events`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', ...from('203.0.113.20') },
        body: JSON.stringify({ id, type: 'chat.message.posted', data: { room: 'shared', text: id } }),
      })
    const accepted = { a: 0, b: 0 }
    const refused: any[] = []
    // 40 publishes, 5 at a time on each node in turn: twice the budget of one node (burst 20).
    for (let round = 0; round < 8; round++) {
      const n = round % 2 === 0 ? 'a' : 'b'
      for (let i = 0; i < 5; i++) {
        const res = await post(n, `r-bea-${round}-${i}`)
        if (res.status === 202 || res.status === 200) accepted[n]++
        else {
          expect(res.status).toBe(429)
          refused.push(((await res.json()) as any).error)
        }
      }
      await synced(n)
    }
    // One budget of 20 between them (plus what refilled at 1/s meanwhile), not 20 on each.
    expect(accepted.a + accepted.b).toBeGreaterThanOrEqual(18)
    expect(accepted.a + accepted.b).toBeLessThanOrEqual(28)
    expect(accepted.a).toBeGreaterThan(0)
    expect(accepted.b).toBeGreaterThan(0)
    expect(refused.length).toBe(40 - accepted.a - accepted.b)
    expect(refused[0]).toMatchObject({ code: 'rate_limited' })
    expect(refused[0].details.retryAfterMs).toBeGreaterThan(0)
  })

  test('failed credentials from one address count on both nodes', async () => {
    const guess = () => `ffk_${crypto.randomUUID().replaceAll('-', '')}`
    const attempt = async (n: 'a' | 'b') => (await fetch(`${base(n)}/admin/keys`, { headers: { authorization: `Bearer ${guess()}`, ...from('203.0.113.30') } })).status
    const statuses: number[] = []
    // 12 guesses, 3 on each node in turn: twice the budget of one node (6 a minute).
    for (let round = 0; round < 4; round++) {
      const n = round % 2 === 0 ? 'a' : 'b'
      for (let i = 0; i < 3; i++) statuses.push(await attempt(n))
      await synced(n)
    }
    expect(statuses.filter((s) => s === 401).length).toBe(6)
    expect(statuses.filter((s) => s === 429).length).toBe(6)
  })

  test('a socket closed 4029 for abuse on one node: its user reconnecting to the other at once is refused there (429 rate_limited, for no longer than the close said)', async () => {
    const token = await mintUserToken(a.env.vars.FANFARE_JWT_SECRET, { sub: 'h-dee' })
    const ws = await open('a', '203.0.113.50', token)
    // The user's budget is 20 (1 a second): past it, 16 refusals within 5 s are abuse.
    for (let i = 0; i < 60; i++) ws.send({ op: 'publish', ref: `p${i}`, event: { id: `h-dee-${i}`, type: 'chat.message.posted', data: { room: 'held', text: `${i}` } } })
    await until('the 4029 close', () => ws.closed, 10_000, 2)
    expect(ws.closed!.code).toBe(4029)
    const given = Number(/reconnect after (\d+) ms/.exec(ws.closed!.reason)?.[1])
    expect(given).toBeGreaterThan(0)
    // At once, from another address (no wait for the next interval, no flush by the test).
    const res = await fetch(`${bBase()}/v1/ws?token=${token}`, { headers: { ...UPGRADE_HEADERS, ...from('203.0.113.51') } })
    expect(res.status).toBe(429)
    const error = ((await res.json()) as any).error
    expect(error.code).toBe('rate_limited')
    expect(error.details.retryAfterMs).toBeGreaterThan(0)
    expect(error.details.retryAfterMs).toBeLessThanOrEqual(given)
  })

  test("a node cut off: its sockets are forgotten once its heartbeats stop, and the user may open up to the limit on the other", async () => {
    const token = await mintUserToken(a.env.vars.FANFARE_JWT_SECRET, { sub: 'c-cid' })
    // 3 on b, 1 on a: the limit (4) reached.
    for (const n of ['b', 'b', 'b', 'a'] as const) {
      await open(n, '203.0.113.40', token)
      await synced(n)
    }
    expect(await tryOpen('a', '203.0.113.40', token)).toEqual({ status: 429, code: 'too_many_connections' })
    // b is cut off from NATS (no goodbye): its sockets stay open there, but a stops counting them
    // once b has been silent for the TTL (1 s), and the user may open 3 more on a.
    await bNc.close()
    const admitted = await until('a to forget b\'s sockets', async () => ((await tryOpen('a', '203.0.113.40', token)).status === 101 ? true : undefined), 10_000, 200)
    expect(admitted).toBe(true)
    expect(await tryOpen('a', '203.0.113.40', token)).toEqual({ status: 101 })
    expect(await tryOpen('a', '203.0.113.40', token)).toEqual({ status: 101 })
    expect(await tryOpen('a', '203.0.113.40', token)).toEqual({ status: 429, code: 'too_many_connections' })
    expect(a.api.limits?.cluster?.peers()).toEqual([])
  })
})

/**
 * The limits of two nodes (createLimits with sharing) over a real NATS, without the API around
 * them: restarts, goodbyes and NATS going away.
 */
describe('limits cluster: node runs, goodbyes and NATS away', () => {
  const logger = createLogger('silent')
  const ann: Principal = { kind: 'user', id: 'ann', roles: [], channels: [], expiresAt: Date.now() + 3_600_000 }
  const started: { limits: Limits; nc: NatsConnection }[] = []
  afterEach(async () => {
    for (const s of started.splice(0)) {
      s.limits.stop()
      await s.nc.close().catch(() => {})
    }
  })
  const prefix = () => `t_lc_${crypto.randomUUID().slice(0, 8)}`
  /**
   * A node's limits: at most 4 sockets per user (per address: no limit that matters); lost after 60 s
   * of silence unless `ttlMs`; sends what changed every 50 ms unless `flushMs` (a heartbeat, which
   * sends it too, every 100 ms or `flushMs`).
   */
  const node = async (url: string, p: string, ttlMs = 60_000, flushMs = 50, more: Record<string, string> = {}) => {
    const nc = await connect({ servers: url, reconnectTimeWait: 100, maxReconnectAttempts: -1 })
    const config = loadConfig({ FANFARE_SUBJECT_PREFIX: p, FANFARE_MAX_CONNECTIONS_PER_USER: '4', FANFARE_MAX_CONNECTIONS_PER_IP: '100000', FANFARE_PRESENCE_TTL_MS: String(ttlMs), ...more })
    const limits = createLimits({ config, share: { nc, logger, flushMs, heartbeatMs: Math.max(100, flushMs) } })
    started.push({ limits, nc })
    return { limits, nc }
  }
  const openAnn = (l: ConnectionLimits, n: number) => {
    for (let i = 0; i < n; i++) {
      const r = l.open('203.0.113.1', ann)
      if ('refusal' in r) throw new Error(r.refusal.message)
    }
  }
  const seen = (l: Limits, n: number, what: string) => until(what, () => l.connections.shared.remote('u:ann') === n || undefined, 10_000, 20)

  test('a node that comes back under the same id (a new run) replaces its last run at once; a node that stops says goodbye and is forgotten at once', async () => {
    const p = prefix()
    const x = await node(TEST_NATS_URL, p)
    const y = await node(TEST_NATS_URL, p)
    openAnn(x.limits.connections, 3)
    await seen(y.limits, 3, 'y to count x\'s 3 sockets')
    expect(y.limits.connections.admitPrincipal(ann)).toBeUndefined()
    openAnn(y.limits.connections, 1)
    expect(y.limits.connections.admitPrincipal(ann)).toMatchObject({ code: 'too_many_connections' })

    // x dies (no goodbye) and a new run of it starts under the same id (built by hand: createLimits
    // makes a new id in each call): y forgets the dead run's sockets when it hears the new run, not
    // after the TTL (60 s here).
    const xNode = x.limits.cluster!.node
    await x.nc.close()
    const again = await connect({ servers: TEST_NATS_URL })
    const config = loadConfig({ FANFARE_MAX_CONNECTIONS_PER_USER: '4' })
    const connections = createConnectionLimits({ config, share: true })
    const rates = createRateLimits({ config, maxSubscriptions: 100, share: true })
    const failures = createAuthFailures({ config, share: true })
    const newRun = startLimitsCluster({ nc: again, prefix: p, node: xNode, inc: 'new-run', connections: connections.shared, rates: rates.shared, authFailures: failures.shared, ttlMs: 60_000, heartbeatMs: 100, flushMs: 50, logger })
    await seen(y.limits, 0, 'y to forget the dead run\'s sockets')
    expect(y.limits.connections.admitPrincipal(ann)).toBeUndefined()

    // The new run opens 2 and stops cleanly: y forgets them at once.
    openAnn(connections, 2)
    await seen(y.limits, 2, 'y to count the new run\'s 2 sockets')
    newRun.stop()
    await seen(y.limits, 0, 'y to forget the stopped node\'s sockets')
    connections.stop()
    rates.stop()
    failures.stop()
    await again.close()
  })

  /** Until `a` and `b` hear each other (each has the other's full state): what one sets from then on reaches the other. */
  const meshed = (a: Limits, b: Limits) =>
    until('the nodes to hear each other', () => (a.cluster!.peers().includes(b.cluster!.node) && b.cluster!.peers().includes(a.cluster!.node)) || undefined, 10_000, 10)

  test('a hold-off set on one node refuses the same user and the same anonymous address on the other within a flush interval, for no longer; a node that joins learns it; after it both admit', async () => {
    const p = prefix()
    const x = await node(TEST_NATS_URL, p)
    const y = await node(TEST_NATS_URL, p)
    await meshed(x.limits, y.limits)
    const HOLD = 2000
    // x closed ann's socket and an anonymous one of 203.0.113.60 for abuse.
    x.limits.connections.holdOff('203.0.113.61', ann, HOLD)
    x.limits.connections.holdOff('203.0.113.60', ANONYMOUS, HOLD)
    const set = performance.now()
    const refused = await until('y to hold ann off', () => y.limits.connections.admitPrincipal(ann), 5000, 5)
    // Within a flush interval (50 ms; 1 s allowed for a loaded machine), not at the hold-off's end.
    expect(performance.now() - set).toBeLessThan(1000)
    expect(refused).toMatchObject({ code: 'rate_limited' })
    expect(refused.retryAfterMs).toBeGreaterThan(0)
    expect(refused.retryAfterMs).toBeLessThanOrEqual(HOLD)
    const address = y.limits.connections.admitAddress('203.0.113.60')
    expect(address).toMatchObject({ code: 'rate_limited' })
    expect(address!.retryAfterMs).toBeLessThanOrEqual(HOLD)
    // The user's other address, and other users, are not held off.
    expect(y.limits.connections.admitAddress('203.0.113.61')).toBeUndefined()
    expect(y.limits.connections.admitPrincipal({ ...ann, id: 'bea' })).toBeUndefined()

    // A node that joins now learns both from the full states it is sent.
    const z = await node(TEST_NATS_URL, p)
    const late = await until('z to hold ann off', () => z.limits.connections.admitPrincipal(ann), 5000, 10)
    expect(late.retryAfterMs).toBeLessThanOrEqual(HOLD)
    expect(z.limits.connections.admitAddress('203.0.113.60')).toMatchObject({ code: 'rate_limited' })

    // After it ends, every node admits both.
    await Bun.sleep(Math.max(0, set + HOLD - performance.now()) + 50)
    for (const l of [x.limits, y.limits, z.limits]) {
      expect(l.connections.admitPrincipal(ann)).toBeUndefined()
      expect(l.connections.admitAddress('203.0.113.60')).toBeUndefined()
    }
  })

  test('a hold-off is sent at once, not at the next interval: the client closed for abuse reconnects to another node at once', async () => {
    const p = prefix()
    // Intervals (and heartbeats) of 10 s: only a hold-off sent at once arrives within the test.
    const x = await node(TEST_NATS_URL, p, 60_000, 10_000)
    const y = await node(TEST_NATS_URL, p, 60_000, 10_000)
    await meshed(x.limits, y.limits)
    x.limits.connections.holdOff('203.0.113.62', ann, 30_000)
    const refused = await until('y to hold ann off', () => y.limits.connections.admitPrincipal(ann), 2000, 5)
    expect(refused).toMatchObject({ code: 'rate_limited' })
  })

  test("an address's connects on two nodes draw on one budget", async () => {
    const p = prefix()
    const rate = { FANFARE_IP_CONNECTS_PER_SECOND: '1', FANFARE_IP_CONNECT_BURST: '10' }
    const x = await node(TEST_NATS_URL, p, 60_000, 50, rate)
    const y = await node(TEST_NATS_URL, p, 60_000, 50, rate)
    await meshed(x.limits, y.limits)
    // 8 connects on x, then y: 2 more (plus what refilled meanwhile, 1 a second), not 10.
    for (let i = 0; i < 8; i++) expect(x.limits.connections.admitAddress('203.0.113.63')).toBeUndefined()
    const seq = x.limits.cluster!.flush()
    await until("y to hear x's connects", () => y.limits.cluster!.heard(x.limits.cluster!.node) >= seq || undefined, 5000, 10)
    let admitted = 0
    while (admitted < 10 && y.limits.connections.admitAddress('203.0.113.63') === undefined) admitted++
    expect(admitted).toBeGreaterThanOrEqual(2)
    expect(admitted).toBeLessThanOrEqual(4)
  })

  test('more keys than one message holds: the deltas and a full state are split, and all arrive', async () => {
    const p = prefix()
    const x = await node(TEST_NATS_URL, p)
    const y = await node(TEST_NATS_URL, p)
    const users = Array.from({ length: 2500 }, (_, i) => ({ ...ann, kind: 'user' as const, id: `many-${i}` }))
    for (const u of users) if ('refusal' in x.limits.connections.open('203.0.113.2', u)) throw new Error('refused')
    // And 1,500 of them held off at once (in one turn: one delta, split).
    const held = users.slice(0, 1500)
    for (const u of held) x.limits.connections.holdOff('203.0.113.2', u, 60_000)
    const all = (l: Limits) =>
      users.every((u) => l.connections.shared.remote(`u:${u.id}`) === 1) &&
      l.connections.shared.remote('ip:203.0.113.2') === 2500 &&
      held.every((u) => l.connections.admitPrincipal(u)?.code === 'rate_limited')
    await until('y to count every socket of x and hold off its users (deltas)', () => all(y.limits) || undefined, 10_000, 50)
    // A node that joins later gets x's (and y's) full state, in parts.
    const z = await node(TEST_NATS_URL, p)
    await until('z to count every socket of x and hold off its users (a full state)', () => all(z.limits) || undefined, 10_000, 50)
  })

  test('NATS away: each node counts its own sockets only (nobody is refused for it); back, they count each other again', async () => {
    // LIMITS_TEST_NATS_PORT: a port of one's own on a shared machine; else any free one.
    const storeDir = mkdtempSync(join(tmpdir(), 'fanfare-limits-'))
    const nats = privateNats({ port: Number(process.env.LIMITS_TEST_NATS_PORT ?? 0) || freePort(), storeDir })
    await nats.start()
    try {
      const p = prefix()
      const x = await node(nats.url, p)
      const y = await node(nats.url, p)
      openAnn(x.limits.connections, 4)
      await seen(y.limits, 4, 'y to count x\'s 4 sockets')
      expect(y.limits.connections.admitPrincipal(ann)).toMatchObject({ code: 'too_many_connections' })
      await nats.stop()
      await seen(y.limits, 0, 'y to count its own sockets only')
      expect(y.limits.connections.admitPrincipal(ann)).toBeUndefined()
      await nats.start()
      await seen(y.limits, 4, 'y to count x\'s sockets again')
      expect(y.limits.connections.admitPrincipal(ann)).toMatchObject({ code: 'too_many_connections' })
    } finally {
      for (const s of started.splice(0)) {
        s.limits.stop()
        await s.nc.close().catch(() => {})
      }
      await nats.stop()
      rmSync(storeDir, { recursive: true, force: true })
    }
  }, 60_000)
})
