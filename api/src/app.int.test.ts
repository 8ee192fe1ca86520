import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { connect } from '@nats-io/transport-node'
import { TEST_NATS_URL } from '../../core/testing/env'
import { topology } from '../../core/nats'
import { createApp } from './app'
import { connectPostgres } from '../../core/db/client'
import { freePort } from '../../core/process'
import { startApi } from './server'
import { createHarness, type ApiHarness } from './test-support'

describe('app', () => {
  let h: ApiHarness
  beforeAll(async () => {
    h = await createHarness({ FANFARE_MAX_BODY_BYTES: '4096' })
  })
  afterAll(async () => {
    await h.close()
  })

  test('healthz and readyz', async () => {
    expect(await h.call('GET', '/healthz')).toEqual({ status: 200, json: { status: 'ok' } })
    const ready = await h.call('GET', '/readyz')
    expect(ready).toEqual({ status: 200, json: { status: 'ready', postgres: true, nats: true, jetstream: true } })
  })

  test('readyz is 503 not_ready when the NATS connection is closed', async () => {
    const nc = await connect({ servers: TEST_NATS_URL })
    await nc.close()
    const app = createApp({ ...h.deps, nc })
    const res = await app.handle(new Request('http://localhost/readyz'))
    expect(res.status).toBe(503)
    expect(await res.json()).toEqual({
      error: { code: 'not_ready', message: expect.any(String), details: { postgres: true, nats: false, jetstream: false } },
    })
  })

  test('readyz is 503 not_ready when the read replica (DATABASE_READ_URL) does not answer: every snapshot and REST read would fail', async () => {
    const gone = await connectPostgres(`postgres://postgres@127.0.0.1:${freePort()}/none`, { max: 1 })
    try {
      const res = await createApp({ ...h.deps, readDb: gone.db }).handle(new Request('http://localhost/readyz'))
      expect(res.status).toBe(503)
      expect(await res.json()).toEqual({ error: { code: 'not_ready', message: expect.any(String), details: { postgres: true, nats: true, jetstream: true, postgresRead: false } } })
      // A replica that answers is reported so.
      const ok = await createApp({ ...h.deps, readDb: h.deps.db }).handle(new Request('http://localhost/readyz'))
      expect(await ok.json()).toEqual({ status: 'ready', postgres: true, nats: true, jetstream: true, postgresRead: true })
    } finally {
      await gone.close()
    }
  })

  test('readyz under a flood of anonymous calls: calls at the same time share one check, not one JetStream request each', async () => {
    const watcher = await connect({ servers: TEST_NATS_URL })
    try {
      // This test's own stream only: the NATS server is shared with other tests.
      let infos = 0
      const sub = watcher.subscribe(`$JS.API.STREAM.INFO.${topology(h.env.config).eventStream}`, { callback: () => void infos++ })
      await watcher.flush()
      const answers = await Promise.all(Array.from({ length: 50 }, () => h.call('GET', '/readyz')))
      await watcher.flush()
      await Bun.sleep(50)
      sub.unsubscribe()
      expect(answers.every((a) => a.status === 200)).toBe(true)
      // 50 unshared checks would ask for the stream's info 50 times.
      expect(infos).toBeLessThanOrEqual(2)
    } finally {
      await watcher.close()
    }
  })

  test('unknown routes are 404 not_found in the error shape', async () => {
    const r = await h.call('GET', '/v2/nothing')
    expect(r.status).toBe(404)
    expect(r.json).toEqual({ error: { code: 'not_found', message: expect.any(String) } })
  })

  test('/docs/json is an OpenAPI document listing every route', async () => {
    const r = await h.call('GET', '/docs/json')
    expect(r.status).toBe(200)
    expect(String(r.json.openapi)).toStartWith('3.')
    const paths = Object.keys(r.json.paths)
    for (const p of [
      '/healthz',
      '/readyz',
      '/v1/events',
      '/v1/leaderboards/{board}',
      '/v1/leaderboards/{board}/players/{player}',
      '/v1/rooms/{room}/messages',
      '/admin/leaderboards/{board}',
      '/admin/rooms/{room}/messages/{id}',
      '/admin/projections',
      '/admin/dead-letters',
    ]) {
      expect(paths).toContain(p)
    }
    expect(r.json.paths['/v1/events'].post.requestBody).toBeDefined()
    expect(r.json.paths['/v1/events'].post.responses['202']).toBeDefined()
    const docs = await h.app.handle(new Request('http://localhost/docs'))
    expect(docs.status).toBe(200)
  })

  test('/docs/json declares what every route may answer besides its own: 400 (a malformed percent-escape), 403 (an origin not allowed), 422 (an unknown query parameter), 401 and 429 where a credential is taken and charged, 503 where Postgres is read (a key is looked up there too), 400 and 413 where it takes a body', async () => {
    const doc = (await h.call('GET', '/docs/json')).json
    const audited = [
      'put /admin/leaderboards/{board}',
      'put /admin/modes/{mode}',
      'put /admin/rooms/{room}',
      'delete /admin/rooms/{room}/messages/{id}',
      'post /admin/projections/{name}/rebuild',
      'post /admin/dead-letters/{id}/replay',
      'delete /admin/dead-letters/{id}',
      'post /admin/keys',
      'delete /admin/keys/{id}',
      'post /admin/users/{user}/revoke',
      'post /admin/users/revoke',
      'post /admin/tokens/revoke',
    ]
    const missing: string[] = []
    for (const [path, ops] of Object.entries<any>(doc.paths)) {
      for (const [method, op] of Object.entries<any>(ops)) {
        const declared = Object.keys(op.responses ?? {})
        const route = `${method} ${path}`
        const wanted = [
          '400',
          // origin_not_allowed, before anything else (FANFARE_ALLOWED_ORIGINS)
          '403',
          '422',
          ...(path === '/healthz' || path === '/readyz' ? [] : ['401', '429']),
          ...(audited.includes(route) || path !== '/healthz' ? ['503'] : []),
          ...(op.requestBody ? ['400', '413'] : []),
        ]
        for (const code of wanted) if (!declared.includes(code)) missing.push(`${route} ${code}`)
      }
    }
    expect(missing).toEqual([])
    // And they are real: an unknown query parameter on a route that takes none.
    const r = await h.call('GET', '/healthz?x=1')
    expect([r.status, r.json.error.code]).toEqual([422, 'invalid_request'])
    const bad = await h.app.handle(new Request('http://localhost/admin/keys', { method: 'POST', headers: { authorization: `Bearer ${h.adminToken}`, 'content-type': 'application/json' }, body: '{' }))
    expect(bad.status).toBe(400)
    // `50%` not encoded: once read as user "50\uFFFD", revoked with a 200; the user "50%" never was.
    const escape = await h.call('POST', '/admin/users/50%/revoke', { token: h.adminToken })
    expect([escape.status, escape.json.error.code]).toEqual([400, 'bad_request'])
  })

  test('every numeric query and path parameter has a range; past it is 422 invalid_request naming the parameter', async () => {
    const doc = (await h.call('GET', '/docs/json')).json
    const numeric = (s: any): boolean => s?.type === 'integer' || s?.type === 'number' || (s?.anyOf ?? []).some(numeric)
    const checked: string[] = []
    for (const [path, ops] of Object.entries<any>(doc.paths)) {
      for (const [method, op] of Object.entries<any>(ops)) {
        const params: any[] = op.parameters ?? []
        for (const param of params.filter((p) => numeric(p.schema))) {
          const where = `${method.toUpperCase()} ${path} ${param.in} ${param.name}`
          checked.push(where)
          expect([where, Number.isFinite(param.schema.minimum), Number.isFinite(param.schema.maximum)]).toEqual([where, true, true])
          for (const value of [String(param.schema.maximum + 1), String(param.schema.minimum - 1), '100000000000000000000', '1' + '0'.repeat(30)]) {
            // Other path parameters get a plain valid name; the one under test gets the value.
            let url = path.replace(/\{(\w+)\}/g, (_, name) => (param.in === 'path' && name === param.name ? value : 'x'))
            if (param.in === 'query') url += `?${param.name}=${value}`
            const r = await h.call(method.toUpperCase(), url, { token: h.adminToken })
            expect([where, value, r.status, r.json.error?.code]).toEqual([where, value, 422, 'invalid_request'])
            expect(r.json.error.message).toContain(param.name)
          }
        }
      }
    }
    // The sweep must have found the parameters it is about.
    expect(checked).toContain('GET /v1/leaderboards/{board} query offset')
    expect(checked).toContain('GET /admin/dead-letters query before')
  })

  test('every integer query and path parameter takes only a sign and decimal digits, over HTTP: 0x10, 1e1, " 5", 5.0 are 422 naming it', async () => {
    // Elysia's own integer coercion reads anything JavaScript's Number() does: `?limit=0x10` was
    // 16 rows and `?limit=%205` five, where a caller's typo must be told.
    const api = await startApi({ ...h.deps, config: { ...h.env.config, HOST: '127.0.0.1', PORT: 0 } })
    try {
      const base = `http://127.0.0.1:${api.port}`
      const doc = (await (await fetch(`${base}/docs/json`)).json()) as any
      const numeric = (s: any): boolean => s?.type === 'integer' || s?.type === 'number' || (s?.anyOf ?? []).some(numeric)
      const call = async (method: string, path: string, param: any, value: string) => {
        let url = path.replace(/\{(\w+)\}/g, (_, name) => (param.in === 'path' && name === param.name ? value : 'x'))
        if (param.in === 'query') url += `?${param.name}=${value}`
        const res = await fetch(base + url, { method, headers: { authorization: `Bearer ${h.adminToken}` } })
        return { status: res.status, json: (await res.json()) as any }
      }
      const checked: string[] = []
      for (const [path, ops] of Object.entries<any>(doc.paths)) {
        for (const [method, op] of Object.entries<any>(ops)) {
          for (const param of ((op.parameters ?? []) as any[]).filter((p) => numeric(p.schema))) {
            const where = `${method.toUpperCase()} ${path} ${param.in} ${param.name}`
            checked.push(where)
            const n = param.schema.minimum + 1
            // As sent on the wire: %20 is a space, %2B a plus sign (a bare + in a query is a space).
            for (const value of [`0x${n}`, `${n}e0`, `%20${n}`, `${n}%20`, `${n}.0`, `0b1`, `0o${n}`, `${n}_0`, '%2B%2B1', 'Infinity', `%0A${n}`]) {
              const r = await call(method.toUpperCase(), path, param, value)
              expect([where, value, r.status, r.json.error?.code]).toEqual([where, value, 422, 'invalid_request'])
              expect(r.json.error.message).toBe(`${param.name} must be an integer from ${param.schema.minimum} to ${param.schema.maximum}`)
            }
            // Decimal digits with an optional sign still pass the parameter's check.
            for (const value of [String(n), `%2B${n}`, `0${n}`]) {
              const r = await call(method.toUpperCase(), path, param, value)
              expect([where, value, r.status === 422 ? r.json.error : 'accepted']).toEqual([where, value, 'accepted'])
            }
          }
        }
      }
      // The sweep must have found the parameters it is about: queries and a path parameter.
      expect(checked).toEqual(expect.arrayContaining(['GET /v1/leaderboards/{board} query limit', 'GET /admin/dead-letters query before', 'DELETE /admin/dead-letters/{id} path id']))
    } finally {
      await api.stop()
    }
  })

  test('a body nested deeper than the limit is 400 too_deep on every route with a body, never a 500', async () => {
    // 100k levels: JSON.parse copes, but Elysia's validation error stringifies the value it
    // rejects (recursively) and overflowed the stack: a 500 on every route without a custom error.
    const deep = (n: number) => '['.repeat(n) + ']'.repeat(n)
    const doc = (await h.call('GET', '/docs/json')).json
    const big = await createHarness()
    try {
      for (const [path, ops] of Object.entries<any>(doc.paths)) {
        for (const [method, op] of Object.entries<any>(ops)) {
          if (!op.requestBody) continue
          const url = path.replace(/\{\w+\}/g, 'x')
          const token = path.startsWith('/admin') ? big.adminToken : big.ingestToken
          for (const body of [`{"zz":${deep(100_000)}}`, `{"order":${deep(100_000)},"visibility":${deep(100_000)},"type":"x","data":{}}`, deep(65), `{"a":${deep(64)}}`]) {
            const r = await big.call(method.toUpperCase(), url, { token, body })
            expect([method, path, body.length, r.status, r.json.error?.code]).toEqual([method, path, body.length, 400, 'too_deep'])
          }
          // At the limit it is parsed and validated as usual.
          const r = await big.call(method.toUpperCase(), url, { token, body: deep(64) })
          expect([method, path, r.status, r.json.error?.code]).toEqual([method, path, 422, 'invalid_request'])
        }
      }
      expect(await big.streamCount()).toBe(0)
    } finally {
      await big.close()
    }
  })

  test('a real server: oversize body is a JSON 413, port 0 binds, stop closes', async () => {
    const api = await startApi({ ...h.deps, config: { ...h.env.config, HOST: '127.0.0.1', PORT: 0 } })
    try {
      expect(api.port).toBeGreaterThan(0)
      const base = `http://127.0.0.1:${api.port}`
      const ok = await fetch(`${base}/healthz`)
      expect(ok.status).toBe(200)
      const big = JSON.stringify({ type: 'chat.message.posted', data: { room: 'r', user: 'u', text: 'x'.repeat(5000) } })
      const res = await fetch(`${base}/v1/events`, {
        method: 'POST',
        headers: { authorization: `Bearer ${h.ingestToken}`, 'content-type': 'application/json' },
        body: big,
      })
      expect(res.status).toBe(413)
      expect(((await res.json()) as any).error.code).toBe('payload_too_large')
      // Far past the limit too: Bun's own limit used to answer these first, with a bare 413.
      for (const size of [4096 * 3 + 64 * 1024, 20 * 1024 * 1024]) {
        const huge = await fetch(`${base}/v1/events`, {
          method: 'POST',
          headers: { authorization: `Bearer ${h.ingestToken}`, 'content-type': 'application/json' },
          body: new Uint8Array(size),
        })
        expect([size, huge.status, huge.headers.get('content-type')]).toEqual([size, 413, expect.stringContaining('application/json')])
        expect(((await huge.json()) as any).error.code).toBe('payload_too_large')
      }
      // A WebSocket upgrade the server cannot complete (no Sec-WebSocket-Key): Elysia answered a
      // text/plain 400; it is a JSON error like every other.
      const upgrade = await fetch(`${base}/v1/ws`, { headers: { upgrade: 'websocket', connection: 'Upgrade', 'sec-websocket-version': '13' } })
      expect([upgrade.status, upgrade.headers.get('content-type')]).toEqual([400, expect.stringContaining('application/json')])
      expect(await upgrade.json()).toEqual({ error: { code: 'bad_request', message: 'Expected a websocket connection' } })
      // Chunked upload without Content-Length: limited while reading.
      const chunks = new ReadableStream({
        start(c) {
          for (let i = 0; i < 10; i++) c.enqueue(new TextEncoder().encode('x'.repeat(1000)))
          c.close()
        },
      })
      const chunked = await fetch(`${base}/v1/events`, {
        method: 'POST',
        headers: { authorization: `Bearer ${h.ingestToken}`, 'content-type': 'application/json' },
        body: chunks,
      })
      expect(chunked.status).toBe(413)
      expect(((await chunked.json()) as any).error.code).toBe('payload_too_large')
    } finally {
      await api.stop()
    }
  })
})
