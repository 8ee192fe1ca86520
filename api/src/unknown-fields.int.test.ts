import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { openLeaseBucket, workerKey } from '../../core/leases'
import { openJobBucket, rebuildKey } from '../../core/rebuild-jobs'
import { createHarness, type ApiHarness } from './test-support'

/** A field no route declares. */
const UNKNOWN = 'zz_unknown'

/**
 * A valid body of every route that takes one, keyed `METHOD /openapi/path`. The sweep below puts an
 * unknown field into each object of it in turn: with the rest valid, the unknown field must be the
 * one problem reported. A new route with a body needs an entry here (the sweep says so).
 */
const validBodies: Record<string, unknown[]> = {
  'POST /v1/events': [
    { id: 'e-1', type: 'score.submitted', data: { board: 'b', player: 'p', score: 1 } },
    { events: [{ type: 'chat.message.posted', data: { room: 'r', user: 'u', text: 'hi' } }] },
  ],
  'PUT /admin/leaderboards/{board}': [{ order: 'asc', operator: 'sum', reset: 'weekly' }],
  'PUT /admin/rooms/{room}': [{ visibility: 'private' }],
  'PUT /admin/modes/{mode}': [{ board: 'arena' }],
  'POST /admin/keys': [{ name: 'game server', scopes: ['publish:score.submitted'], expiresAt: '2099-01-01T00:00:00.000Z' }],
  'POST /admin/tokens/revoke': [{ jti: 'j-1', exp: 4_000_000_000 }],
  'POST /admin/users/revoke': [{ user: 'u-1' }],
}

/** The bootstrap credential a route accepts: admin routes need the admin token, publishing the ingest one. */
// Admin routes (and /metrics, which needs admin:read) take the admin token.
const tokenFor = (h: ApiHarness, path: string) => (path.startsWith('/admin') || path === '/metrics' ? h.adminToken : h.ingestToken)

/**
 * Where a problem with the unknown field at `pointer` (into the body) is reported: the body's
 * pointer (request validation), or, for an event's `data` (checked per event type by the ingest
 * service), the event's index in the batch and the pointer into that event.
 */
function expectedProblems(pointer: string) {
  const inBatch = /^\/events\/(\d+)(\/data\/.*)$/.exec(pointer)
  if (inBatch) return [{ index: Number(inBatch[1]), path: inBatch[2], message: 'unknown field' }]
  if (pointer.startsWith('/data/')) return [{ index: 0, path: pointer, message: 'unknown field' }]
  return [{ path: pointer, message: 'unknown field', in: 'body' }]
}

/** Every object inside `value` (itself included), with its JSON pointer. */
function objectsIn(value: unknown, path = ''): { path: string; node: Record<string, unknown> }[] {
  if (Array.isArray(value)) return value.flatMap((v, i) => objectsIn(v, `${path}/${i}`))
  if (typeof value !== 'object' || value === null) return []
  const node = value as Record<string, unknown>
  return [{ path, node }, ...Object.entries(node).flatMap(([k, v]) => objectsIn(v, `${path}/${k}`))]
}

/** `value` with `{ [UNKNOWN]: 'x' }` added to the object at `path`. */
function withUnknownAt(value: unknown, path: string): unknown {
  const copy = structuredClone(value)
  const target = path === '' ? copy : path.slice(1).split('/').reduce<any>((o, k) => o[k], copy)
  target[UNKNOWN] = 'x'
  return copy
}

/** A path of the document with a valid value for each parameter: 1 for integers, `x` otherwise. */
function urlOf(path: string, op: any): string {
  return path.replace(/\{(\w+)\}/g, (_, name) => {
    const param = (op.parameters ?? []).find((p: any) => p.in === 'path' && p.name === name)
    return JSON.stringify(param?.schema ?? {}).includes('"type":"integer"') ? '1' : 'x'
  })
}

describe('unknown fields are refused, named, and change nothing', () => {
  let h: ApiHarness
  let doc: any
  beforeAll(async () => {
    h = await createHarness()
    doc = (await h.call('GET', '/docs/json')).json
  })
  afterAll(async () => {
    await h.close()
  })

  /** Nothing any request of these tests may have changed: no event, no board rules, no room setting. */
  async function expectNothingChanged() {
    expect(await h.streamCount()).toBe(0)
    expect((await h.call('GET', '/admin/leaderboards/x', { token: h.adminToken })).json.configured).toBe(false)
    expect((await h.call('GET', '/admin/rooms/x', { token: h.adminToken })).json.visibility).toBe('public')
  }

  test('PUT /admin/leaderboards/x { "resets": "daily" } (a misspelt rule) is 422 naming it, and sets no rule', async () => {
    for (const body of [{ resets: 'daily' }, { order: 'asc', resets: 'daily' }]) {
      const r = await h.call('PUT', '/admin/leaderboards/x', { token: h.adminToken, body })
      expect(r.status).toBe(422)
      expect(r.json).toEqual({
        error: { code: 'invalid_request', message: 'unknown field /resets in the body', details: [{ path: '/resets', message: 'unknown field', in: 'body' }] },
      })
    }
    await expectNothingChanged()
  })

  test('every route with a body refuses an unknown field in any object of it, naming the field', async () => {
    const swept: string[] = []
    for (const [path, ops] of Object.entries<any>(doc.paths)) {
      for (const [method, op] of Object.entries<any>(ops)) {
        if (!op.requestBody) continue
        const route = `${method.toUpperCase()} ${path}`
        const url = urlOf(path, op)
        // Even with no example, an unknown field alone must be named among the problems.
        const token = tokenFor(h, path)
        const alone = await h.call(method.toUpperCase(), url, { token, body: { [UNKNOWN]: 'x' } })
        expect([route, alone.status]).toEqual([route, 422])
        expect(alone.json.error.details).toContainEqual(expect.objectContaining({ path: `/${UNKNOWN}`, message: 'unknown field' }))

        expect([route, validBodies[route] !== undefined ? 'has a valid example body' : 'add a valid example body to validBodies']).toEqual([
          route,
          'has a valid example body',
        ])
        for (const example of validBodies[route]) {
          for (const { path: at } of objectsIn(example)) {
            const where = `${route} ${JSON.stringify(example)} at '${at}'`
            swept.push(where)
            const r = await h.call(method.toUpperCase(), url, { token, body: withUnknownAt(example, at) })
            expect([where, r.status]).toEqual([where, 422])
            // The rest is valid, so the unknown field is the one problem, and the message names it.
            expect([where, r.json.error.details]).toEqual([where, expectedProblems(`${at}/${UNKNOWN}`)])
            expect([where, r.json.error.message]).toEqual([where, expect.stringContaining(UNKNOWN)])
          }
        }
      }
    }
    // The sweep reached the nested objects: the batch's event and its data.
    expect(swept).toContain(`POST /v1/events ${JSON.stringify(validBodies['POST /v1/events'][1])} at '/events/0/data'`)
    expect(swept).toContain(`PUT /admin/leaderboards/{board} ${JSON.stringify(validBodies['PUT /admin/leaderboards/{board}'][0])} at ''`)
    await expectNothingChanged()
  })

  test('every route refuses an unknown query parameter, naming it', async () => {
    const swept: string[] = []
    for (const [path, ops] of Object.entries<any>(doc.paths)) {
      for (const [method, op] of Object.entries<any>(ops)) {
        const route = `${method.toUpperCase()} ${path}`
        swept.push(route)
        const url = `${urlOf(path, op)}?${UNKNOWN}=1`
        const body = op.requestBody ? validBodies[route]?.[0] : undefined
        const r = await h.call(method.toUpperCase(), url, { token: tokenFor(h, path), body })
        expect([route, r.status, r.json]).toEqual([
          route,
          422,
          { error: { code: 'invalid_request', message: `unknown query parameter ${UNKNOWN}`, details: [{ path: `/${UNKNOWN}`, message: 'unknown field', in: 'query' }] } },
        ])
      }
    }
    expect(swept).toContain('GET /healthz')
    expect(swept).toContain('GET /v1/leaderboards/{board}')
    expect(swept).toContain('DELETE /admin/rooms/{room}/messages/{id}')
    await expectNothingChanged()
  })

  test('a route that takes no body refuses one, naming the route, and does nothing', async () => {
    const swept: string[] = []
    for (const [path, ops] of Object.entries<any>(doc.paths)) {
      for (const [method, op] of Object.entries<any>(ops)) {
        // GET cannot carry a body (fetch refuses to send one).
        if (op.requestBody || method === 'get') continue
        const route = `${method.toUpperCase()} ${path}`
        swept.push(route)
        for (const body of [{}, { force: true }, []]) {
          const r = await h.call(method.toUpperCase(), urlOf(path, op), { token: tokenFor(h, path), body })
          expect([route, body, r.status, r.json]).toEqual([
            route,
            body,
            422,
            { error: { code: 'invalid_request', message: `${method.toUpperCase()} ${path.replace(/\{(\w+)\}/g, ':$1')} takes no body`, details: [{ path: '/', message: 'unexpected body', in: 'body' }] } },
          ])
        }
      }
    }
    expect(swept).toContain('DELETE /admin/rooms/{room}/messages/{id}')
    expect(swept).toContain('POST /admin/projections/{name}/rebuild')
    await expectNothingChanged()
  })

  test('known query parameters still work, alone and together', async () => {
    expect((await h.call('GET', '/v1/leaderboards/x?limit=5&offset=0')).status).toBe(200)
    expect((await h.call('GET', '/healthz')).status).toBe(200)
    expect((await h.call('GET', '/admin/dead-letters?limit=5', { token: h.adminToken })).status).toBe(200)
  })

  // Responses are checked against their schemas as declared (no normalisation strips extras), so
  // what other processes wrote (worker heartbeats, rebuild jobs: perhaps a newer version with more
  // fields) must be narrowed to the schema, not make the route fail.
  test('admin views of what workers wrote answer their schema, whatever extra fields the writer added', async () => {
    const leases = await openLeaseBucket(h.nc, h.env.config)
    await leases.put(workerKey('w-future'), JSON.stringify({ id: 'w-future', partitions: [], since: '2030-01-01T00:00:00.000Z', heartbeatAt: '2030-01-01T00:00:00.000Z', version: 9 }))
    const workers = await h.call('GET', '/admin/workers', { token: h.adminToken })
    expect(workers.status).toBe(200)
    expect(workers.json.workers).toEqual([{ id: 'w-future', partitions: [], since: '2030-01-01T00:00:00.000Z', heartbeatAt: '2030-01-01T00:00:00.000Z' }])

    const jobs = await openJobBucket(h.nc, h.env.config)
    const job = { id: 'j1', projection: 'leaderboards', state: 'done', requestedAt: '2030-01-01T00:00:00.000Z', force: false, attempts: 1, appliedSeq: 3, pending: 0 }
    await jobs.put(rebuildKey('leaderboards'), JSON.stringify({ ...job, shadowTable: 'lb_shadow_2' }))
    const rebuild = await h.call('GET', '/admin/projections/leaderboards/rebuild', { token: h.adminToken })
    expect(rebuild).toEqual({ status: 200, json: job })
  })
})
