import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { readFileSync } from 'node:fs'
import { resolve } from 'node:path'
import { sql } from 'drizzle-orm'
import { SignJWT } from 'jose'
import { createLogger } from '../../core/logger'
import { rowsOf } from '../../core/db/client'
import { until, WsClient } from '../../test/e2e/harness'
import { createKeyStore } from './auth/keys'
import { mintUserToken } from './auth/mint'
import { startApi, type RunningApi } from './server'
import { startTestNode, UPGRADE_HEADERS, type TestNode } from './test-support'

/**
 * Three kinds of callers, never confused (README "Security"), checked from outside on a real node,
 * route by route: every route and method of the node's own OpenAPI document, for every kind of
 * caller, answers what the README's REST reference and the document's declared security say. A
 * caller that must be refused gets 401 (no or a bad credential) or 403 (a credential of the wrong
 * kind or scope) with a code, never a 2xx or a 5xx, and changes nothing (every table and the event
 * stream are compared before and after). Then the WebSocket: the upgrade, the `auth` frame, and
 * subscribe / publish / presence per caller.
 */

/** A caller: how it presents itself, and what the README says it is. */
type Caller = {
  name: string
  /** The Authorization header as sent (undefined: none). */
  authorization?: string
  /** The credential itself, for `?token=` and `auth` frames. */
  token?: string
  /** What it is: a refused credential names its 401 code. */
  is:
    | { kind: 'anonymous' }
    | { kind: 'user'; sub: string; moderator?: boolean; channels?: string[] }
    | { kind: 'key'; scopes: string[] }
    | { kind: 'bad'; code: 'invalid_token' | 'token_expired' | 'key_expired' | 'revoked' | 'unauthorized' }
}

/** What a route needs, as the README's REST reference writes it in its Auth column. */
type Need = 'probe' | 'viewer' | 'publisher' | 'moderator' | 'admin:read' | 'admin:write'

const ROOT = resolve(import.meta.dir, '../..')

/**
 * The Auth column of the README's REST reference, per `METHOD /path` (paths as OpenAPI writes them).
 * Read from the README itself, so that the README cannot say one thing while the node does another.
 */
function readmeNeeds(): Map<string, Need> {
  const readme = readFileSync(resolve(ROOT, 'README.md'), 'utf8')
  const section = readme.slice(readme.indexOf('## REST reference'), readme.indexOf('## Observability'))
  const needs = new Map<string, Need>()
  for (const line of section.split('\n')) {
    const m = /^\| `(GET|POST|PUT|DELETE|PATCH) ([^`?\s]+)[^|]*\| ([^|]+) \|/.exec(line)
    if (!m) continue
    const route = `${m[1]} ${m[2].replace(/:(\w+)/g, '{$1}')}`
    const auth = m[3].trim()
    const need: Need | undefined =
      auth === 'none'
        ? route === 'GET /healthz' || route === 'GET /readyz'
          ? 'probe'
          : 'viewer'
        : auth === 'as the channel'
          ? 'viewer'
          : auth === 'a user or a key (per event type)'
            ? 'publisher'
            : auth === 'admin:write, or a user with the `moderator` role'
              ? 'moderator'
              : auth === 'admin:read' || auth === 'admin:write'
                ? auth
                : undefined
    if (!need) throw new Error(`README REST reference: ${route} has an Auth column this test cannot read: "${auth}"`)
    needs.set(route, need)
  }
  return needs
}

/** Who may publish a type, as the README's "Who may publish" column says. */
type Publishers = { users: 'all' | 'moderators' | 'none'; scopes: string[] }

/** The README's publish table (Events): per event type, who may publish it. */
function readmePublishers(): Map<string, Publishers> {
  const readme = readFileSync(resolve(ROOT, 'README.md'), 'utf8')
  const table = readme.slice(readme.indexOf('| Type | Data | Key | Who may publish |'))
  const rows = new Map<string, Publishers>()
  for (const line of table.split('\n').slice(2)) {
    if (!line.startsWith('|')) break
    const cells = line.split(/(?<!\\)\|/).map((c) => c.trim())
    const who = cells[cells.length - 2]
    const users = /users with the `moderator` role/.test(who) ? 'moderators' : /(^|, )users\b/.test(who) ? 'all' : 'none'
    const keys = /keys with (.*)/.exec(who)?.[1] ?? ''
    const scopes = [...keys.matchAll(/`((?:publish|admin):[\w.*]+)`/g)].map((m) => m[1])
    for (const [, type] of cells[1].matchAll(/`([\w.]+)`/g)) {
      // "match.start, match.abort": each its own scope.
      rows.set(type, { users, scopes: scopes.filter((sc) => !sc.startsWith('publish:') || sc === 'publish:*' || sc === `publish:${type}` || !scopes.includes(`publish:${type}`)) })
    }
  }
  return rows
}

/** The security the OpenAPI document should declare for a need (OpenAPI 3.1: role names for a bearer scheme). */
function declaredFor(need: Need, anonymous: 'subscribe' | 'off'): unknown {
  switch (need) {
    case 'probe':
      return undefined
    case 'viewer':
      return anonymous === 'off' ? [{ bearer: [] }] : [{}, { bearer: [] }]
    case 'publisher':
    case 'moderator':
      return [{ bearer: [] }]
    case 'admin:read':
    case 'admin:write':
      return [{ bearer: [need] }]
  }
}

const has = (c: Caller, scope: string) => c.is.kind === 'key' && c.is.scopes.includes(scope)
const adminReader = (c: Caller) => has(c, 'admin:read') || has(c, 'admin:write')

/**
 * What the README says `caller` gets from a route of `need`: 'allowed' (any answer but 401/403,
 * never a 5xx), or the refusal. `event`: what POST /v1/events carries (see Who may publish).
 */
function expected(need: Need, c: Caller, anonymous: 'subscribe' | 'off', event?: 'score' | 'chat'): 'allowed' | { status: 401 | 403; code: string } {
  if (need === 'probe') return 'allowed'
  if (c.is.kind === 'bad') return { status: 401, code: c.is.code }
  if (c.is.kind === 'anonymous') return need === 'viewer' && anonymous === 'subscribe' ? 'allowed' : { status: 401, code: 'unauthorized' }
  const forbidden = { status: 403 as const, code: 'forbidden' }
  switch (need) {
    case 'viewer':
      return 'allowed'
    case 'publisher':
      if (event === 'score') return has(c, 'publish:*') || has(c, 'publish:score.submitted') ? 'allowed' : forbidden
      return c.is.kind === 'user' || has(c, 'publish:*') || has(c, 'publish:chat.message.posted') ? 'allowed' : forbidden
    case 'moderator':
      return (c.is.kind === 'user' && c.is.moderator) || has(c, 'admin:write') ? 'allowed' : forbidden
    case 'admin:read':
      return adminReader(c) ? 'allowed' : forbidden
    case 'admin:write':
      return has(c, 'admin:write') ? 'allowed' : forbidden
  }
}

/** A JWT signed with nothing (`alg: none`), as an attacker would send it. */
const unsigned = (claims: Record<string, unknown>) => {
  const part = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url')
  return `${part({ alg: 'none', typ: 'JWT' })}.${part(claims)}.`
}

/** A JWT of any claims, signed with `secret` (HS256 unless `alg` says otherwise). */
const signWith = (secret: string, claims: Record<string, unknown>, alg = 'HS256') => new SignJWT(claims).setProtectedHeader({ alg }).sign(new TextEncoder().encode(secret))

describe('three kinds of callers, never confused: every route, every caller', () => {
  let node: TestNode
  let closed: RunningApi
  let closedBase: string
  let callers: Caller[]
  let admin: string
  const now = () => Math.floor(Date.now() / 1000)
  const PRIVATE_ROOM = 'mx-vip'

  const call = async (base: string, method: string, path: string, c: Caller | undefined, body?: unknown) => {
    const headers: Record<string, string> = {}
    if (c?.authorization !== undefined) headers.authorization = c.authorization
    if (body !== undefined) headers['content-type'] = 'application/json'
    const res = await fetch(`${base}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) })
    const text = await res.text()
    let json: any
    try {
      json = JSON.parse(text)
    } catch {
      json = text
    }
    return { status: res.status, json }
  }
  const asAdmin = (method: string, path: string, body?: unknown) => call(node.base, method, path, { name: 'admin', authorization: `Bearer ${admin}`, is: { kind: 'key', scopes: [] } }, body)

  /** Every table of the node's database (a key's lastUsedAt aside: a key's use is not its caller's change) and the event stream. */
  const fingerprint = async () => {
    const tables = await rowsOf<{ name: string }>(node.database.db, sql`SELECT table_name AS name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1`)
    const parts: string[] = []
    for (const { name } of tables) {
      const [row] = await rowsOf<{ digest: string; n: string }>(
        node.database.db,
        sql.raw(`SELECT md5(coalesce(string_agg(r, ',' ORDER BY r), '')) AS digest, count(*) AS n FROM (SELECT (to_jsonb(t) - 'last_used_at')::text AS r FROM "${name}" t) x`),
      )
      parts.push(`${name}:${row.n}:${row.digest}`)
    }
    parts.push(`stream:${await node.streamCount()}`)
    return parts
  }

  beforeAll(async () => {
    node = await startTestNode({
      // Hundreds of requests from one address: the budgets are the limits' tests' business.
      FANFARE_AUTH_FAILURES_PER_MINUTE: '1000000',
      FANFARE_USER_OPS_BURST: '1000000',
      FANFARE_ANONYMOUS_OPS_BURST: '1000000',
      FANFARE_IP_CONNECT_BURST: '1000000',
      FANFARE_MAX_CONNECTIONS_PER_USER: '1000',
    })
    admin = node.env.vars.FANFARE_ADMIN_TOKEN
    // The same node's configuration with anonymous viewers refused, on the same database and stream.
    closed = await startApi({ config: { ...node.env.config, FANFARE_ANONYMOUS: 'off', PORT: 0 }, db: node.database.db, nc: node.nc, logger: createLogger('silent') })
    closedBase = `http://127.0.0.1:${closed.port}`
    const secret = node.env.vars.FANFARE_JWT_SECRET
    const user = (sub: string, extra: Partial<Parameters<typeof mintUserToken>[1]> = {}) => mintUserToken(secret, { sub, ...extra })
    const key = async (scopes: string[]) => {
      const r = await asAdmin('POST', '/admin/keys', { name: `mx ${scopes.join(' ')}`, scopes })
      expect(r.status).toBe(201)
      return r.json as { id: string; key: string }
    }
    expect((await asAdmin('PUT', `/admin/rooms/${PRIVATE_ROOM}`, { visibility: 'private' })).status).toBe(200)

    const revokedKey = await key(['admin:write'])
    expect((await asAdmin('DELETE', `/admin/keys/${revokedKey.id}`)).status).toBe(200)
    // Past its expiresAt already (the route refuses to create one so; the store does not check).
    const store = createKeyStore({ db: node.database.db })
    const expired = await store.create({ name: 'mx expired', scopes: ['admin:write'], createdBy: 'test', expiresAt: new Date(Date.now() - 1000) })
    await store.stop()
    const revokedJti = await user('ann', { jti: 'mx-revoked-jti' })
    expect((await asAdmin('POST', '/admin/tokens/revoke', { jti: 'mx-revoked-jti', exp: now() + 3600 })).status).toBe(200)
    const cutOff = await user('cut', { issuedAt: now() - 5 })
    expect((await asAdmin('POST', '/admin/users/cut/revoke')).status).toBe(200)

    const bearer = (token: string) => `Bearer ${token}`
    const signed = (claims: Record<string, unknown>) => signWith(secret, claims)
    const good = (name: string, token: string, is: Caller['is']): Caller => ({ name, token, authorization: bearer(token), is })
    const bad = (name: string, token: string, code: Extract<Caller['is'], { kind: 'bad' }>['code']): Caller => ({ name, token, authorization: bearer(token), is: { kind: 'bad', code } })
    callers = [
      { name: 'anonymous', is: { kind: 'anonymous' } },
      good('player ann', await user('ann'), { kind: 'user', sub: 'ann' }),
      good('player bob', await user('bob'), { kind: 'user', sub: 'bob' }),
      good('moderator', await user('mo', { roles: ['moderator'] }), { kind: 'user', sub: 'mo', moderator: true }),
      good('vip member', await user('vic', { channels: [`chat:${PRIVATE_ROOM}`] }), { kind: 'user', sub: 'vic', channels: [`chat:${PRIVATE_ROOM}`] }),
      // A user whose sub is a bootstrap key's id, or whose claims name scopes or roles it is not: a user all the same.
      good('user named admin', await user('admin', { roles: ['admin'] }), { kind: 'user', sub: 'admin' }),
      good('user claiming scopes', await signed({ sub: 'sly', scopes: ['admin:write'], scope: 'admin:write', kind: 'key', iat: now(), exp: now() + 3600 }), { kind: 'user', sub: 'sly' }),
      good('key publish:*', (await key(['publish:*'])).key, { kind: 'key', scopes: ['publish:*'] }),
      good('key publish:score.submitted', (await key(['publish:score.submitted'])).key, { kind: 'key', scopes: ['publish:score.submitted'] }),
      good('key publish:chat.message.posted', (await key(['publish:chat.message.posted'])).key, { kind: 'key', scopes: ['publish:chat.message.posted'] }),
      good('key admin:read', (await key(['admin:read'])).key, { kind: 'key', scopes: ['admin:read'] }),
      good('key admin:write', (await key(['admin:write'])).key, { kind: 'key', scopes: ['admin:write'] }),
      good('ingest token', node.env.vars.FANFARE_INGEST_TOKEN, { kind: 'key', scopes: ['publish:*'] }),
      good('admin token', admin, { kind: 'key', scopes: ['publish:*', 'admin:read', 'admin:write'] }),
      bad('expired key', expired.key, 'key_expired'),
      bad('revoked key', revokedKey.key, 'revoked'),
      bad('revoked jti', revokedJti, 'revoked'),
      bad('revoked user', cutOff, 'revoked'),
      bad('expired jwt', await user('ann', { issuedAt: now() - 7200, ttlSeconds: 60 }), 'token_expired'),
      bad('malformed jwt', 'not.a.jwt', 'invalid_token'),
      bad('alg none', unsigned({ sub: 'ann', iat: now(), exp: now() + 3600 }), 'invalid_token'),
      bad('alg none as admin', unsigned({ sub: 'admin', scopes: ['admin:write'], iat: now(), exp: now() + 3600 }), 'invalid_token'),
      bad('HS512', await signWith(secret, { sub: 'ann', iat: now(), exp: now() + 3600 }, 'HS512'), 'invalid_token'),
      bad('wrong secret', await mintUserToken('not-the-secret-but-32-bytes-long!!', { sub: 'ann' }), 'invalid_token'),
      bad('unknown key', 'ffk_' + 'A'.repeat(32), 'invalid_token'),
      bad('admin token, one character off', admin.slice(0, -1) + (admin.endsWith('x') ? 'y' : 'x'), 'invalid_token'),
      bad('JWT secret as a token', secret, 'invalid_token'),
      { name: 'Basic header', authorization: `Basic ${Buffer.from(`x:${admin}`).toString('base64')}`, is: { kind: 'bad', code: 'unauthorized' } },
      { name: 'Bearer without a token', authorization: 'Bearer ', is: { kind: 'bad', code: 'unauthorized' } },
      { name: 'two tokens in one header', authorization: `Bearer ${admin} ${admin}`, is: { kind: 'bad', code: 'unauthorized' } },
    ]
  })
  afterAll(async () => {
    await closed?.stop()
    await node?.close()
  })

  /** A well-formed request for each route: a caller allowed through gets the route's own answer (a 404 for a name that does not exist is one). */
  const requestFor = (method: string, path: string, c: Caller): { path: string; body?: unknown; event?: 'score' | 'chat' }[] => {
    const fill = (values: Record<string, string>) => path.replace(/\{(\w+)\}/g, (_, name) => values[name] ?? 'mx-x')
    switch (`${method} ${path}`) {
      case 'POST /v1/events':
        return [
          { path, body: { type: 'score.submitted', data: { board: 'mx-board', player: 'p1', score: 1 } }, event: 'score' },
          { path, body: { type: 'chat.message.posted', data: { room: 'mx-lobby', text: 'hi', ...(c.is.kind === 'user' ? {} : { user: 'bot' }) } }, event: 'chat' },
        ]
      case 'PUT /admin/leaderboards/{board}':
        return [{ path: fill({}), body: { operator: 'sum' } }]
      case 'PUT /admin/modes/{mode}':
        return [{ path: fill({}), body: { board: 'mx-board' } }]
      case 'PUT /admin/rooms/{room}':
        return [{ path: fill({}), body: { visibility: 'public' } }]
      case 'POST /admin/keys':
        return [{ path, body: { name: 'made in the matrix', scopes: ['admin:read'] } }]
      case 'POST /admin/users/revoke':
        return [{ path, body: { user: 'mx-nobody' } }]
      case 'POST /admin/tokens/revoke':
        return [{ path, body: { jti: 'mx-some-jti', exp: now() + 3600 } }]
      case 'POST /admin/projections/{name}/rebuild':
      case 'GET /admin/projections/{name}/rebuild':
        return [{ path: fill({ name: 'no-such-projection' }) }]
      case 'POST /admin/dead-letters/{id}/replay':
      case 'DELETE /admin/dead-letters/{id}':
        return [{ path: fill({ id: '999999' }) }]
      case 'DELETE /admin/keys/{id}':
        return [{ path: fill({ id: 'key_0000000000000000' }) }]
      case 'GET /v1/presence/{channel}':
        return [{ path: fill({ channel: 'chat:mx-lobby' }) }]
      default:
        return [{ path: fill({}) }]
    }
  }

  test('the README lists every route of the OpenAPI document, and the document declares the security the README gives it', async () => {
    const needs = readmeNeeds()
    for (const [base, anonymous] of [
      [node.base, 'subscribe'],
      [closedBase, 'off'],
    ] as const) {
      const doc = (await (await fetch(`${base}/docs/json`)).json()) as any
      const mismatched: string[] = []
      for (const [path, ops] of Object.entries<any>(doc.paths)) {
        for (const [method, op] of Object.entries<any>(ops)) {
          const route = `${method.toUpperCase()} ${path}`
          if (route === 'GET /v1/ws') {
            // An upgrade with a credential or none (README "WebSocket protocol"): without one it
            // opens also where anonymous viewers are off, and must then send an auth frame.
            if (JSON.stringify(op.security) !== JSON.stringify([{}, { bearer: [] }])) mismatched.push(`${route}: declares ${JSON.stringify(op.security)}`)
            continue
          }
          const need = needs.get(route)
          if (!need) {
            mismatched.push(`${route}: not in the README's REST reference`)
            continue
          }
          const want = declaredFor(need, anonymous)
          if (JSON.stringify(op.security) !== JSON.stringify(want)) mismatched.push(`${route} (${need}, anonymous ${anonymous}): declares ${JSON.stringify(op.security)}, wants ${JSON.stringify(want)}`)
        }
      }
      // And the reverse: the README documents no route the node does not serve.
      for (const route of needs.keys()) {
        const [method, path] = route.split(' ')
        if (!doc.paths[path]?.[method.toLowerCase()]) mismatched.push(`${route}: in the README, not in the OpenAPI document`)
      }
      expect(mismatched).toEqual([])
    }
  })

  test('every route, every caller: 401/403 with its code for a caller that must be refused, which changes nothing; never a 5xx', async () => {
    const needs = readmeNeeds()
    const doc = (await (await fetch(`${node.base}/docs/json`)).json()) as any
    const wrong: string[] = []
    let checked = 0
    for (const [path, ops] of Object.entries<any>(doc.paths)) {
      for (const [method, op] of Object.entries<any>(ops)) {
        const route = `${method.toUpperCase()} ${path}`
        if (route === 'GET /v1/ws') continue
        const need = needs.get(route)
        if (!need) throw new Error(`${route} is not in the README's REST reference`)
        // Refused callers first, with everything compared before and after.
        const before = await fingerprint()
        const allowed: [Caller, ReturnType<typeof requestFor>[number]][] = []
        for (const c of callers) {
          for (const req of requestFor(method.toUpperCase(), path, c)) {
            const want = expected(need, c, 'subscribe', req.event)
            if (want === 'allowed') {
              allowed.push([c, req])
              continue
            }
            const r = await call(node.base, method.toUpperCase(), req.path, c, req.body)
            checked++
            if (r.status !== want.status || r.json?.error?.code !== want.code) wrong.push(`${route} ${req.event ?? ''} as ${c.name}: ${r.status} ${JSON.stringify(r.json?.error ?? r.json).slice(0, 160)}, wants ${want.status} ${want.code}`)
          }
        }
        const after = await fingerprint()
        const changed = after.filter((p, i) => p !== before[i])
        if (changed.length > 0) wrong.push(`${route}: refused callers changed ${changed.join(', ')}`)
        for (const [c, req] of allowed) {
          const r = await call(node.base, method.toUpperCase(), req.path, c, req.body)
          checked++
          if (r.status === 401 || r.status === 403 || r.status >= 500) wrong.push(`${route} ${req.event ?? ''} as ${c.name}: ${r.status} ${JSON.stringify(r.json?.error ?? r.json).slice(0, 160)}, wants it allowed`)
        }
        // ?token= is for the WebSocket: on REST it is never a credential, and never ignored beside one.
        const plain = requestFor(method.toUpperCase(), path, callers[0])[0]
        const viaQuery = await call(node.base, method.toUpperCase(), `${plain.path}?token=${encodeURIComponent(admin)}`, undefined, plain.body)
        if (viaQuery.status < 300 || viaQuery.status >= 500 || (need !== 'viewer' && need !== 'probe' && viaQuery.status !== 401)) wrong.push(`${route} with ?token=<admin token> and no header: ${viaQuery.status} ${JSON.stringify(viaQuery.json?.error)}`)
        const adminCaller = callers.find((c) => c.name === 'admin token')!
        const both = await call(node.base, method.toUpperCase(), `${requestFor(method.toUpperCase(), path, adminCaller)[0].path}?token=garbage`, adminCaller, requestFor(method.toUpperCase(), path, adminCaller)[0].body)
        if (both.status !== 422 || both.json?.error?.code !== 'invalid_request') wrong.push(`${route} with the admin token and ?token=garbage: ${both.status} ${JSON.stringify(both.json?.error)}`)
        checked += 2
      }
    }
    expect(wrong).toEqual([])
    expect(checked).toBeGreaterThan(1000)
  })

  test('FANFARE_ANONYMOUS=off: every route but the probes refuses a caller without a credential (401 unauthorized); credentials are judged as before', async () => {
    const needs = readmeNeeds()
    const doc = (await (await fetch(`${closedBase}/docs/json`)).json()) as any
    const wrong: string[] = []
    const before = await fingerprint()
    for (const [path, ops] of Object.entries<any>(doc.paths)) {
      for (const [method, op] of Object.entries<any>(ops)) {
        const route = `${method.toUpperCase()} ${path}`
        if (route === 'GET /v1/ws') continue
        const need = needs.get(route)
        if (!need) throw new Error(`${route} is not in the README's REST reference`)
        for (const c of callers.filter((c) => ['anonymous', 'player ann', 'key admin:read', 'malformed jwt', 'revoked key'].includes(c.name))) {
          const req = requestFor(method.toUpperCase(), path, c)[0]
          const want = expected(need, c, 'off', req.event)
          if (want === 'allowed' && c.is.kind !== 'anonymous') continue
          const r = await call(closedBase, method.toUpperCase(), req.path, c, req.body)
          if (want === 'allowed' ? r.status === 401 || r.status === 403 || r.status >= 500 : r.status !== want.status || r.json?.error?.code !== want.code) {
            wrong.push(`${route} as ${c.name}: ${r.status} ${JSON.stringify(r.json?.error).slice(0, 160)}, wants ${JSON.stringify(want)}`)
          }
        }
      }
    }
    expect(wrong).toEqual([])
    expect(await fingerprint()).toEqual(before)
  })

  test('a private room over REST, per caller: its messages and presence for its members and admin readers; 403 forbidden for anyone else, anonymous viewers too; a refused credential 401', async () => {
    const member = (c: Caller) => adminReader(c) || (c.is.kind === 'user' && (c.is.channels ?? []).includes(`chat:${PRIVATE_ROOM}`))
    const wrong: string[] = []
    for (const path of [`/v1/rooms/${PRIVATE_ROOM}/messages`, `/v1/presence/chat:${PRIVATE_ROOM}`]) {
      for (const c of callers) {
        const r = await call(node.base, 'GET', path, c)
        const want = c.is.kind === 'bad' ? `401 ${c.is.code}` : member(c) ? '200' : '403 forbidden'
        const got = r.status === 200 ? '200' : `${r.status} ${r.json?.error?.code}`
        if (got !== want) wrong.push(`${path} as ${c.name}: ${got}, wants ${want}`)
      }
    }
    expect(wrong).toEqual([])
  })

  test('every event type, every caller: POST /v1/events is allowed or 403 forbidden (naming the type) as the README\'s publish table says; a key is its scopes, never more', async () => {
    const table = readmePublishers()
    // A valid event of each type: an allowed caller gets 202 (or the type's own refusal, a seat of a match that does not exist).
    const data: Record<string, Record<string, unknown>> = {
      'score.submitted': { board: 'mx-ev', player: 'p1', score: 1 },
      'chat.message.posted': { room: 'mx-ev', text: 'hi' },
      'chat.message.deleted': { room: 'mx-ev', messageId: 'm1' },
      'stream.started': { stream: 'mx-ev', title: 'live' },
      'stream.updated': { stream: 'mx-ev', title: 'still live' },
      'stream.ended': { stream: 'mx-ev' },
      'stream.viewers.sampled': { stream: 'mx-ev', viewers: 1, users: [] },
      'reaction.sent': { stream: 'mx-ev', emoji: '👍' },
      'reaction.batched': { stream: 'mx-ev', dedupWindowMs: 1000, reactions: [{ id: 'r1', by: 'u:ann', emoji: '👍' }] },
      'poll.opened': { stream: 'mx-ev', poll: 'mx-ev', question: 'which?', options: ['a', 'b'] },
      'poll.voted': { poll: 'mx-ev', option: 0 },
      'poll.closed': { poll: 'mx-ev' },
      'match.created': { match: 'mx-ev', mode: 'mx', maxPlayers: 2 },
      'match.join': { match: 'mx-ev' },
      'match.ready': { match: 'mx-ev' },
      'match.leave': { match: 'mx-ev' },
      'match.start': { match: 'mx-ev' },
      'match.finish': { match: 'mx-ev', results: [{ player: 'p1', score: 1 }] },
      'match.abort': { match: 'mx-ev' },
      'match.player.connection': { match: 'mx-ev', player: 'p1', connected: true },
    }
    const publishScopes = [...new Set([...table.values()].flatMap((p) => p.scopes))].filter((sc) => sc.startsWith('publish:') && sc !== 'publish:*')
    const keyCallers: Caller[] = []
    for (const scope of publishScopes) {
      const r = await asAdmin('POST', '/admin/keys', { name: `mx ${scope}`, scopes: [scope] })
      expect([scope, r.status]).toEqual([scope, 201])
      keyCallers.push({ name: `key ${scope}`, authorization: `Bearer ${r.json.key}`, is: { kind: 'key', scopes: [scope] } })
    }
    // The API nodes' own scope is no scope an admin can give.
    const system = await asAdmin('POST', '/admin/keys', { name: 'mx system', scopes: ['system:presence'] })
    expect([system.status, system.json.error?.code]).toEqual([422, 'invalid_request'])
    const who = [...callers.filter((c) => c.is.kind !== 'bad'), ...keyCallers]
    const wrong: string[] = []
    for (const type of Object.keys(data)) {
      const rule = table.get(type)
      if (!rule) {
        wrong.push(`${type}: not in the README's publish table`)
        continue
      }
      for (const c of who) {
        const allowed =
          c.is.kind === 'user'
            ? rule.users === 'all' || (rule.users === 'moderators' && c.is.moderator === true)
            : c.is.kind === 'key' && rule.scopes.some((sc) => has(c, sc) || (sc.startsWith('publish:') && has(c, 'publish:*')))
        const withUser = type === 'chat.message.posted' && c.is.kind === 'key' ? { user: 'bot' } : {}
        const r = await call(node.base, 'POST', '/v1/events', c, { type, data: { ...data[type], ...withUser } })
        const typeDenied = r.status === 403 && JSON.stringify(r.json.error?.details ?? []).includes(`"type":"${type}"`)
        const want = c.is.kind === 'anonymous' ? '401 unauthorized' : allowed ? 'allowed' : '403 forbidden'
        const got = r.status === 401 || typeDenied ? `${r.status} ${r.json.error?.code}` : r.status >= 500 ? `${r.status}` : 'allowed'
        if (got !== want) wrong.push(`${type} as ${c.name}: ${r.status} ${JSON.stringify(r.json.error ?? r.json).slice(0, 140)}, wants ${want}`)
      }
    }
    expect(wrong).toEqual([])
  })

  const upgrade = (base: string, opts: { query?: string; authorization?: string }) =>
    fetch(`${base}/v1/ws${opts.query === undefined ? '' : `?token=${encodeURIComponent(opts.query)}`}`, {
      headers: { ...UPGRADE_HEADERS, ...(opts.authorization === undefined ? {} : { authorization: opts.authorization }) },
    })
  const wsOf = (base: string) => base.replace('http://', 'ws://') + '/v1/ws'

  test('the WebSocket upgrade: a refused credential is 401 with its code, as ?token= and as a header; a token given both ways is 422; good ones open', async () => {
    const wrong: string[] = []
    for (const c of callers) {
      if (c.is.kind === 'anonymous') continue
      const ways = [...(c.token !== undefined ? [{ query: c.token }] : []), { authorization: c.authorization }]
      for (const way of ways) {
        const how = 'query' in way ? '?token=' : 'header'
        if (c.is.kind === 'bad') {
          const res = await upgrade(node.base, way)
          const code = ((await res.json()) as any).error?.code
          if (res.status !== 401 || code !== c.is.code) wrong.push(`${c.name} as ${how}: ${res.status} ${code}, wants 401 ${c.is.code}`)
        } else {
          const socket = await WsClient.open('query' in way ? `${wsOf(node.base)}?token=${encodeURIComponent(way.query!)}` : wsOf(node.base), 'query' in way ? undefined : { authorization: way.authorization! })
          socket.send({ op: 'ping', ref: 'p' })
          await socket.reply('p')
          if (socket.closed) wrong.push(`${c.name} as ${how}: closed ${JSON.stringify(socket.closed)}`)
          socket.close()
        }
      }
      if (c.token !== undefined) {
        // Never one credential read and the other ignored, good or bad.
        for (const other of [admin, c.token]) {
          const res = await upgrade(node.base, { query: c.token, authorization: `Bearer ${other}` })
          const code = ((await res.json()) as any).error?.code
          if (res.status !== 422 || code !== 'invalid_request') wrong.push(`${c.name} as ?token= and another in the header: ${res.status} ${code}, wants 422 invalid_request`)
        }
      }
    }
    // An empty ?token= is a credential left out by mistake (a client's unset variable), as `Bearer `
    // with nothing after it: refused, on either node, never an anonymous socket.
    for (const base of [node.base, closedBase]) {
      const res = await upgrade(base, { query: '' })
      const code = ((await res.json().catch(() => ({}))) as any).error?.code
      if (res.status !== 401 || code !== 'unauthorized') wrong.push(`${base === closedBase ? 'anonymous off' : 'anonymous on'}: an empty ?token= is ${res.status} ${code}, wants 401 unauthorized`)
    }
    expect(wrong).toEqual([])
  })

  test('an auth frame with a refused credential: an error frame with its code, then close 4001 (an expired token) or 4003; the socket never becomes anyone', async () => {
    const wrong: string[] = []
    for (const c of callers) {
      if (c.is.kind !== 'bad' || c.token === undefined) continue
      const socket = await WsClient.open(wsOf(node.base))
      socket.send({ op: 'auth', ref: 'a', token: c.token })
      const reply = await socket.reply('a')
      const closed = await until('closed', () => socket.closed, 5000)
      const closeCode = c.is.code === 'token_expired' ? 4001 : 4003
      if (reply.op !== 'error' || reply.error.code !== c.is.code || closed.code !== closeCode) wrong.push(`${c.name}: ${JSON.stringify(reply)} closed ${closed.code}, wants ${c.is.code} and ${closeCode}`)
    }
    expect(wrong).toEqual([])
  })

  test('an open socket never changes whose it is: a token or key of another principal in an auth frame is forbidden (close 4003); a viewer may sign in once', async () => {
    const byName = (name: string) => callers.find((c) => c.name === name)!
    const pairs: [string, string][] = [
      ['player ann', 'player bob'],
      ['player ann', 'key admin:write'],
      ['key publish:*', 'player ann'],
      ['key admin:read', 'admin token'],
      ['ingest token', 'admin token'],
    ]
    for (const [first, then] of pairs) {
      const socket = await WsClient.open(`${wsOf(node.base)}?token=${encodeURIComponent(byName(first).token!)}`)
      socket.send({ op: 'auth', ref: 'a', token: byName(then).token })
      const reply = await socket.reply('a')
      expect([first, then, reply.op, reply.error?.code, (await until('closed', () => socket.closed, 5000)).code]).toEqual([first, then, 'error', 'forbidden', 4003])
    }
    const viewer = await WsClient.open(wsOf(node.base))
    viewer.send({ op: 'auth', ref: 'a', token: byName('key admin:read').token })
    expect(await viewer.reply('a')).toMatchObject({ op: 'authed', principal: expect.stringMatching(/^k:key_/) })
    viewer.close()
  })

  test('subscribe, presence and publish over the WebSocket, per caller: public channels for all, user:<sub> for that user and admin readers, a private room for its members and admin readers, publishes as Who may publish says; refusals are forbidden frames that change nothing', async () => {
    const mine = 'user:ann'
    const publicChannels = ['leaderboard:mx-board', 'chat:mx-lobby', 'presence:chat:mx-lobby']
    const privateChannels = [`chat:${PRIVATE_ROOM}`, `presence:chat:${PRIVATE_ROOM}`]
    const member = (c: Caller) => adminReader(c) || (c.is.kind === 'user' && (c.is.channels ?? []).includes(`chat:${PRIVATE_ROOM}`))
    const wrong: string[] = []
    const before = await node.streamCount()
    // No worker runs: nothing a socket does may write a table, refused or not (publishes go to the stream).
    const tables = (await fingerprint()).filter((p) => !p.startsWith('stream:'))
    let acks = 0
    const sockets: WsClient[] = []
    const subscribers = callers.filter((c) => c.is.kind !== 'bad')
    for (const c of subscribers) {
      const socket = await WsClient.open(c.token === undefined ? wsOf(node.base) : `${wsOf(node.base)}?token=${encodeURIComponent(c.token)}`)
      sockets.push(socket)
      const want = new Map<string, boolean>([
        ...publicChannels.map((ch) => [ch, true] as const),
        ...privateChannels.map((ch) => [ch, member(c)] as const),
        [mine, adminReader(c) || (c.is.kind === 'user' && c.is.sub === 'ann')],
      ])
      for (const channel of want.keys()) socket.send({ op: 'subscribe', ref: channel, channel })
      for (const [channel, allowed] of want) {
        const first = await until(`${c.name} ${channel}`, () => socket.frames.find((f) => f.channel === channel && (f.op === 'snapshot' || f.op === 'error')))
        const got = first.op === 'snapshot' ? 'snapshot' : first.error.code
        if (got !== (allowed ? 'snapshot' : 'forbidden')) wrong.push(`${c.name} subscribing to ${channel}: ${got}, wants ${allowed ? 'a snapshot' : 'forbidden'}`)
      }
      const events = {
        score: { type: 'score.submitted', data: { board: 'mx-ws', player: 'p1', score: 1 } },
        chat: { type: 'chat.message.posted', data: { room: 'mx-lobby', text: 'hi', ...(c.is.kind === 'user' ? {} : { user: 'bot' }) } },
      }
      for (const [kind, event] of Object.entries(events)) {
        socket.send({ op: 'publish', ref: kind, event })
        const reply = await socket.reply(kind)
        const want = expected('publisher', c, 'subscribe', kind as 'score' | 'chat')
        // Without a credential on REST: 401 unauthorized; over a socket the same caller is told the same.
        const refusal = c.is.kind === 'anonymous' ? 'unauthorized' : 'forbidden'
        const got = reply.op === 'ack' ? 'ack' : reply.error?.code
        if (got !== (want === 'allowed' ? 'ack' : refusal)) wrong.push(`${c.name} publishing ${kind}: ${got}, wants ${want === 'allowed' ? 'ack' : refusal}`)
        if (reply.op === 'ack') acks++
      }
      if (socket.closed) wrong.push(`${c.name}: closed ${JSON.stringify(socket.closed)}`)
    }
    expect(wrong).toEqual([])
    // Refused publishes stored nothing; refused subscribes made nobody present.
    expect(await node.streamCount()).toBe(before + acks)
    expect((await fingerprint()).filter((p) => !p.startsWith('stream:'))).toEqual(tables)
    const present = async (channel: string) => ((await asAdmin('GET', `/v1/presence/${channel}`)).json.members ?? []).map((m: { user: string }) => m.user).sort()
    const users = (cs: Caller[]) => [...new Set(cs.flatMap((c) => (c.is.kind === 'user' ? [c.is.sub] : [])))].sort()
    const everyone = users(subscribers)
    await until('every user present in the public room', async () => JSON.stringify(await present('chat:mx-lobby')) === JSON.stringify(everyone))
    // A refused user never shows up: this waits for exactly the members.
    await until('the members present in the private room', async () => JSON.stringify(await present(`chat:${PRIVATE_ROOM}`)) === JSON.stringify(users(subscribers.filter(member))))
    for (const socket of sockets) socket.close()
  })

  test('FANFARE_ANONYMOUS=off: a socket without a credential may only ping or authenticate; every other op is unauthorized and changes nothing', async () => {
    const before = await node.streamCount()
    const socket = await WsClient.open(wsOf(closedBase))
    const frames = [
      { op: 'subscribe', ref: 's1', channel: 'leaderboard:mx-board' },
      { op: 'subscribe', ref: 's2', channel: 'presence:chat:mx-lobby' },
      { op: 'publish', ref: 'p1', event: { type: 'chat.message.posted', data: { room: 'mx-lobby', text: 'hi' } } },
    ]
    for (const f of frames) socket.send(f)
    for (const f of frames) expect([f.ref, (await socket.reply(f.ref)).error?.code]).toEqual([f.ref, 'unauthorized'])
    socket.send({ op: 'auth', ref: 'a', token: callers.find((c) => c.name === 'player ann')!.token })
    expect(await socket.reply('a')).toMatchObject({ op: 'authed', principal: 'u:ann' })
    socket.send({ op: 'subscribe', ref: 's3', channel: 'leaderboard:mx-board' })
    await until('served after auth', () => socket.of('leaderboard:mx-board').length === 1)
    socket.close()
    expect(await node.streamCount()).toBe(before)
  })

  test('revocations never cross kinds: a user whose sub is a key id or a bootstrap name, revoked, leaves the key and the bootstrap token working; a revoked key leaves the user named like it working', async () => {
    const byName = (name: string) => callers.find((c) => c.name === name)!
    const reader = byName('key admin:read')
    const readerId = (await asAdmin('GET', '/admin/keys')).json.keys.find((k: { name: string }) => k.name === 'mx admin:read').id as string
    const revokedKeyId = (await asAdmin('GET', '/admin/keys')).json.keys.find((k: { revokedAt: string | null }) => k.revokedAt !== null).id as string
    const secret = node.env.vars.FANFARE_JWT_SECRET
    const namedLikeReader = await mintUserToken(secret, { sub: readerId, issuedAt: now() - 5 })
    const namedLikeRevoked = await mintUserToken(secret, { sub: revokedKeyId })
    const namedLikeIngest = await mintUserToken(secret, { sub: 'ingest', issuedAt: now() - 5 })
    for (const user of [readerId, 'admin', 'ingest']) expect((await asAdmin('POST', `/admin/users/${user}/revoke`)).status).toBe(200)
    const status = async (token: string, path = '/v1/leaderboards/mx-board') => (await call(node.base, 'GET', path, { name: 'x', authorization: `Bearer ${token}`, is: { kind: 'anonymous' } })).status
    // The users are revoked ...
    expect([await status(namedLikeReader), await status(byName('user named admin').token!), await status(namedLikeIngest)]).toEqual([401, 401, 401])
    // ... the keys and bootstrap tokens with those names are not, on REST and on a socket.
    expect([await status(reader.token!, '/admin/keys'), await status(admin, '/admin/keys'), await status(node.env.vars.FANFARE_INGEST_TOKEN)]).toEqual([200, 200, 200])
    for (const token of [reader.token!, admin, node.env.vars.FANFARE_INGEST_TOKEN]) {
      const socket = await WsClient.open(`${wsOf(node.base)}?token=${encodeURIComponent(token)}`)
      socket.send({ op: 'ping', ref: 'p' })
      await socket.reply('p')
      expect(socket.closed).toBeUndefined()
      socket.close()
    }
    // A revoked key's id is no revoked user.
    expect(await status(namedLikeRevoked)).toBe(200)
  })
})
