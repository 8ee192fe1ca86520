import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import type { NatsConnection } from '@nats-io/transport-node'
import { mintUserToken } from '../../api/src/auth/mint'
import { startApi, type RunningApi } from '../../api/src/server'
import { connectPostgres, type Database } from '../../core/db/client'
import { createLogger } from '../../core/logger'
import { connectNats, ensureStreams } from '../../core/nats'
import { createTestEnv, type TestEnv } from '../../core/testing/env'
import { until, WsClient } from '../e2e/harness'

/**
 * Revocation across API nodes: two real nodes (each with its own Postgres pool and NATS
 * connection, as separate processes would have) share one database and one NATS. A credential is
 * revoked through node A; its sockets on both nodes must close with 4003 within one second (only
 * the NATS broadcast is that fast: the periodic reload runs every 30 s), new connections with it
 * are refused with 401 `revoked`, and a node started afterwards (it knows only what Postgres
 * holds) refuses it too.
 */
type Node = { name: string; api: RunningApi; nc: NatsConnection; database: Database }

describe('revocation reaches open sockets on every node', () => {
  let env: TestEnv
  let a: Node
  let b: Node
  const started: Node[] = []

  const startNode = async (name: string): Promise<Node> => {
    const database = await connectPostgres(env.vars.DATABASE_URL, { max: 4 })
    const nc = await connectNats(env.vars.NATS_URL, `revocation-test-${name}`)
    const api = await startApi({ config: env.config, db: database.db, nc, logger: createLogger('silent') })
    const node = { name, api, nc, database }
    started.push(node)
    return node
  }
  const stopNode = async (n: Node) => {
    started.splice(started.indexOf(n), 1)
    await n.api.stop()
    await n.nc.close()
    await n.database.close()
  }

  beforeAll(async () => {
    env = await createTestEnv({ PORT: '0', HOST: '127.0.0.1' })
    const nc = await connectNats(env.vars.NATS_URL, 'revocation-test-setup')
    await ensureStreams(nc, env.config)
    await nc.close()
    a = await startNode('a')
    b = await startNode('b')
  })
  afterAll(async () => {
    for (const n of [...started]) await stopNode(n)
    await env?.cleanup()
  })

  const base = (n: Node) => `http://127.0.0.1:${n.api.port}`
  const mint = (sub: string, opts: { issuedAt?: number; jti?: string } = {}) =>
    mintUserToken(env.vars.FANFARE_JWT_SECRET, { sub, issuedAt: Math.floor(Date.now() / 1000) - 10, ...opts })
  const rest = async (n: Node, method: string, path: string, token: string, body?: unknown) => {
    const res = await fetch(`${base(n)}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    })
    return { status: res.status, json: (await res.json()) as any }
  }
  /** A round trip, so we know the node has registered the socket (and it is still open). */
  let pings = 0
  const ping = async (c: WsClient) => {
    const ref = `ping-${++pings}`
    c.send({ op: 'unsubscribe', ref, channel: 'leaderboard:none' })
    return (await c.reply(ref, 5_000)).op
  }
  /** A socket with the credential as `?token=`. */
  const viaQuery = async (n: Node, token: string) => {
    const c = await WsClient.open(`${base(n).replace('http', 'ws')}/v1/ws?token=${encodeURIComponent(token)}`)
    expect(await ping(c)).toBe('unsubscribed')
    return c
  }
  /** A socket opened without a token that authenticates with a first `auth` frame (browsers). */
  const viaFrame = async (n: Node, token: string) => {
    const c = await WsClient.open(`${base(n).replace('http', 'ws')}/v1/ws`)
    c.send({ op: 'auth', ref: 'auth', token })
    expect((await c.reply('auth')).op).toBe('authed')
    return c
  }
  /** What a WebSocket upgrade with this credential gets: its status and error code. */
  const upgrade = async (n: Node, token: string) => {
    const res = await fetch(`${base(n)}/v1/ws?token=${encodeURIComponent(token)}`, {
      headers: { upgrade: 'websocket', connection: 'Upgrade', 'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==', 'sec-websocket-version': '13' },
    })
    const body = res.status === 101 ? undefined : ((await res.json()) as any)
    if (res.status === 101) await res.body?.cancel()
    return [res.status, body?.error?.code]
  }
  /**
   * Every socket closes with 4003 within one second of `since` (when the revocation was answered:
   * it is recorded then; the time the admin request itself takes on a loaded machine is not the
   * broadcast's), after an error frame saying why.
   */
  const expectClosedWithinASecond = async (clients: WsClient[], since: number) => {
    await until('revoked sockets to close', () => clients.every((c) => c.closed), 5_000, 10)
    for (const c of clients) {
      expect(c.closed).toEqual({ code: 4003, reason: 'revoked' })
      expect(c.closedAt! - since).toBeLessThan(1_000)
      expect(c.frames.filter((f) => f.op === 'error').map((f) => f.error.code)).toEqual(['revoked'])
    }
  }
  const expectOpen = async (clients: WsClient[]) => {
    for (const c of clients) expect([c.closed, await ping(c)]).toEqual([undefined, 'unsubscribed'])
  }
  const chat = (user: string) => ({ type: 'chat.message.posted', data: { room: 'lobby', user, text: 'hi' } })

  test('a user: sockets on both nodes close with 4003 within 1 s; old tokens refused, newer ones work, after a restart too', async () => {
    const old = await mint('alice')
    const alice = [await viaQuery(a, old), await viaQuery(b, old), await viaFrame(b, old)]
    const bob = [await viaQuery(a, await mint('bob')), await viaQuery(b, await mint('bob'))]

    const r = await rest(a, 'POST', '/admin/users/alice/revoke', env.vars.FANFARE_ADMIN_TOKEN)
    const since = Date.now()
    expect(r.status).toBe(200)
    await expectClosedWithinASecond(alice, since)
    await expectOpen(bob)

    for (const n of [a, b]) {
      expect(await upgrade(n, old)).toEqual([401, 'revoked'])
      expect([(await rest(n, 'POST', '/v1/events', old, chat('alice'))).status]).toEqual([401])
    }
    const fresh = await mint('alice', { issuedAt: Math.floor(Date.parse(r.json.revokedBefore) / 1000) + 1 })
    const again = await viaQuery(b, fresh)
    expect((await rest(a, 'POST', '/v1/events', fresh, chat('alice'))).status).toBe(202)

    // A node started now knows only what Postgres holds.
    const c = await startNode('c')
    expect(await upgrade(c, old)).toEqual([401, 'revoked'])
    expect((await rest(c, 'POST', '/v1/events', old, chat('alice'))).json.error.code).toBe('revoked')
    expect(await upgrade(c, fresh)).toEqual([101, undefined])
    await stopNode(c)
    for (const s of [again, ...bob]) s.close()
  })

  test('users whose sub is `.` or `..` (no URL path can carry them): revoked by the user in the body; their sockets on both nodes close within 1 s', async () => {
    const dot = await mint('.')
    const dots = await mint('..')
    const dotSockets = [await viaQuery(a, dot), await viaFrame(b, dot)]
    const dotsSockets = [await viaQuery(a, dots), await viaQuery(b, dots)]
    const bob = [await viaQuery(b, await mint('bob'))]
    const admin = env.vars.FANFARE_ADMIN_TOKEN

    // The path can only name them as `.`/`%2E`, which fetch (and any browser) turns into another path.
    for (const user of ['.', '%2E']) {
      const r = await rest(a, 'POST', `/admin/users/${user}/revoke`, admin)
      expect([user, r.status, r.json.error?.code]).toEqual([user, 422, 'invalid_request'])
    }
    for (const user of ['..', '%2E%2E']) expect((await rest(a, 'POST', `/admin/users/${user}/revoke`, admin)).status).toBe(404)
    await expectOpen([...dotSockets, ...dotsSockets])

    const r = await rest(a, 'POST', '/admin/users/revoke', admin, { user: '.' })
    const since = Date.now()
    expect([r.status, r.json.user]).toEqual([200, '.'])
    await expectClosedWithinASecond(dotSockets, since)
    await expectOpen([...dotsSockets, ...bob])

    const r2 = await rest(b, 'POST', '/admin/users/revoke', admin, { user: '..' })
    const since2 = Date.now()
    expect([r2.status, r2.json.user]).toEqual([200, '..'])
    await expectClosedWithinASecond(dotsSockets, since2)
    await expectOpen(bob)
    for (const n of [a, b]) {
      expect(await upgrade(n, dot)).toEqual([401, 'revoked'])
      expect(await upgrade(n, dots)).toEqual([401, 'revoked'])
    }
    for (const s of bob) s.close()
  })

  test('one token by jti: its sockets on both nodes close within 1 s; the same user\'s other token stays', async () => {
    const phone = await mint('dave', { jti: 'dave-phone' })
    const laptop = await mint('dave', { jti: 'dave-laptop' })
    const revoked = [await viaQuery(a, phone), await viaFrame(b, phone)]
    const kept = [await viaQuery(a, laptop), await viaQuery(b, laptop)]
    const exp = JSON.parse(Buffer.from(phone.split('.')[1], 'base64url').toString()).exp

    const revokedStatus = (await rest(a, 'POST', '/admin/tokens/revoke', env.vars.FANFARE_ADMIN_TOKEN, { jti: 'dave-phone', exp })).status
    const since = Date.now()
    expect(revokedStatus).toBe(200)
    await expectClosedWithinASecond(revoked, since)
    await expectOpen(kept)

    for (const n of [a, b]) expect(await upgrade(n, phone)).toEqual([401, 'revoked'])
    const c = await startNode('c')
    expect(await upgrade(c, phone)).toEqual([401, 'revoked'])
    expect(await upgrade(c, laptop)).toEqual([101, undefined])
    await stopNode(c)
    for (const s of kept) s.close()
  })

  test('an API key: its sockets on both nodes close within 1 s; REST and WebSocket refuse it on every node, after a restart too', async () => {
    const created = await rest(a, 'POST', '/admin/keys', env.vars.FANFARE_ADMIN_TOKEN, { name: 'match server', scopes: ['publish:*'] })
    expect(created.status).toBe(201)
    const key: string = created.json.key
    const other = (await rest(a, 'POST', '/admin/keys', env.vars.FANFARE_ADMIN_TOKEN, { name: 'other server', scopes: ['publish:*'] })).json.key
    const score = { type: 'score.submitted', data: { board: 'b', player: 'p', score: 1 } }
    // Node B has the key in its lookup cache: revocation must evict it there too.
    expect((await rest(b, 'POST', '/v1/events', key, score)).status).toBe(202)
    const sockets = [await viaQuery(a, key), await viaQuery(b, key)]
    const kept = [await viaQuery(b, other)]
    const ref = 'publish-1'
    sockets[1].send({ op: 'publish', ref, event: score })
    expect((await sockets[1].reply(ref)).op).toBe('ack')

    const deletedStatus = (await rest(a, 'DELETE', `/admin/keys/${created.json.id}`, env.vars.FANFARE_ADMIN_TOKEN)).status
    const since = Date.now()
    expect(deletedStatus).toBe(200)
    await expectClosedWithinASecond(sockets, since)
    await expectOpen(kept)

    for (const n of [a, b]) {
      expect(await upgrade(n, key)).toEqual([401, 'revoked'])
      const r = await rest(n, 'POST', '/v1/events', key, score)
      expect([r.status, r.json.error.code]).toEqual([401, 'revoked'])
    }
    const c = await startNode('c')
    expect(await upgrade(c, key)).toEqual([401, 'revoked'])
    expect((await rest(c, 'POST', '/v1/events', other, score)).status).toBe(202)
    await stopNode(c)
    for (const s of kept) s.close()
  })
})
