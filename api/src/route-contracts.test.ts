import { describe, expect, test } from 'bun:test'
import { Elysia, t, type AnyElysia } from 'elysia'
import { createLogger } from '../../core/logger'
import { jsonBody } from './body'
import { errorHandler } from './errors'
import { routeContracts } from './route-contracts'

const Item = t.Object({ a: t.Number() })
const Body = t.Object({ ok: t.Boolean(), nested: Item, list: t.Array(Item), either: t.Union([Item, t.Null()]) })

/** An app configured like createApp's: inputs checked as declared (normalize off), responses narrowed. */
// `any`: each test declares its own routes; their types are not what is under test.
function appWith(route: (app: any) => AnyElysia) {
  const app: AnyElysia = route(new Elysia({ normalize: false }).use(errorHandler(createLogger('silent'))).use(routeContracts((): AnyElysia => app)))
  return async (path: string) => {
    const res = await app.handle(new Request(`http://localhost${path}`))
    return { status: res.status, json: await res.json() }
  }
}

const extras = { ok: true, more: 1, nested: { a: 1, b: 2 }, list: [{ a: 1, c: 3 }], either: { a: 2, d: 4 } }
const declared = { ok: true, nested: { a: 1 }, list: [{ a: 1 }], either: { a: 2 } }

describe('routeContracts', () => {
  test('drops undeclared fields at every depth, for a plain answer and a status() answer', async () => {
    const call = appWith((app) =>
      app
        .get('/plain', () => structuredClone(extras), { response: Body })
        .get('/status', ({ status }: any) => status(202, structuredClone(extras) as never), { response: { 202: Body, 404: t.Object({ x: t.String() }) } })
        .get('/:id/param', () => structuredClone(extras), { response: { 200: Body } }),
    )
    expect(await call('/plain')).toEqual({ status: 200, json: declared })
    expect(await call('/status')).toEqual({ status: 202, json: declared })
    expect(await call('/x/param')).toEqual({ status: 200, json: declared })
  })

  test('leaves routes without a response schema alone', async () => {
    const call = appWith((app) => app.get('/free', () => structuredClone(extras)))
    expect(await call('/free')).toEqual({ status: 200, json: extras })
  })

  test('an answer that does not match its schema is a 500 internal (our bug), not a 422 blaming the client', async () => {
    const call = appWith((app) => app.get('/wrong', () => ({ ...declared, ok: 'yes' }) as never, { response: Body }))
    expect(await call('/wrong')).toEqual({ status: 500, json: { error: { code: 'internal', message: 'internal error' } } })
  })

  test('a route without a query schema refuses any query parameter, naming it; one with a schema is checked by it', async () => {
    const call = appWith((app) => app.get('/none', () => ({ ok: true })).get('/some', ({ query }: any) => query, { query: t.Object({ a: t.Optional(t.String()) }) }))
    expect(await call('/none')).toEqual({ status: 200, json: { ok: true } })
    expect(await call('/none?')).toEqual({ status: 200, json: { ok: true } })
    expect(await call('/none?x=1')).toEqual({
      status: 422,
      json: { error: { code: 'invalid_request', message: 'unknown query parameter x', details: [{ path: '/x', message: 'unknown field', in: 'query' }] } },
    })
    expect(await call('/some?a=1')).toEqual({ status: 200, json: { a: '1' } })
    expect(await call('/some?a=1&y=2')).toEqual({
      status: 422,
      json: { error: { code: 'invalid_request', message: 'unknown query parameter y', details: [{ path: '/y', message: 'unknown field', in: 'query' }] } },
    })
  })

  test('a query parameter given more than once is 422 naming it, on any route: which value counts would be a guess', async () => {
    const call = appWith((app) => app.get('/some', ({ query }: any) => query, { query: t.Object({ a: t.Optional(t.String()), b: t.Optional(t.String()) }) }).get('/none', () => ({ ok: true })))
    const twice = (name: string) => ({
      status: 422,
      json: { error: { code: 'invalid_request', message: `query parameter ${name} is given more than once`, details: [{ path: `/${name}`, message: 'given more than once', in: 'query' }] } },
    })
    expect(await call('/some?a=1&a=2')).toEqual(twice('a'))
    expect(await call('/some?b=1&a=1&a=1')).toEqual(twice('a'))
    expect(await call('/some?a=1&b=2')).toEqual({ status: 200, json: { a: '1', b: '2' } })
    expect(await call('/none?x=1&x=2')).toEqual({
      status: 422,
      json: { error: { code: 'invalid_request', message: 'unknown query parameter x', details: [{ path: '/x', message: 'unknown field', in: 'query' }] } },
    })
  })

  test('a "#" in the query (a raw request line may carry one) hides no name given twice: Elysia reads past it', async () => {
    const call = appWith((app) => app.get('/some', ({ query }: any) => query, { query: t.Object({ a: t.Optional(t.String()) }) }))
    // new URL() drops "#..." as a fragment, Elysia's query parser does not: it read a=2 here.
    expect((await call('/some?a=1#&a=2')).json.error.message).toBe('query parameter a is given more than once')
    expect((await call('/some?a=1#&x=2')).json.error.message).toBe('unknown query parameter x')
    expect(await call('/some?a=1#b')).toEqual({ status: 200, json: { a: '1#b' } })
  })

  test('one query parameter on a route with a query schema costs no second parse of the URL (every WebSocket upgrade with ?token=)', async () => {
    const call = appWith((app) => app.get('/some', ({ query }: any) => query, { query: t.Object({ a: t.Optional(t.String()), b: t.Optional(t.String()) }) }).get('/none', () => ({ ok: true })))
    const Real = globalThis.URLSearchParams
    let parsed = 0
    globalThis.URLSearchParams = class extends Real {
      constructor(...args: ConstructorParameters<typeof URLSearchParams>) {
        super(...args)
        parsed++
      }
    } as typeof URLSearchParams
    try {
      expect(await call(`/some?a=${'x'.repeat(300)}`)).toEqual({ status: 200, json: { a: 'x'.repeat(300) } })
      expect(parsed).toBe(0)
      // Two or more are still read, for a name given twice; a route without a schema still names an unknown one.
      expect((await call('/some?a=1&a=2')).json.error.message).toBe('query parameter a is given more than once')
      expect((await call('/none?x=1')).json.error.message).toBe('unknown query parameter x')
      expect(parsed).toBe(2)
    } finally {
      globalThis.URLSearchParams = Real
    }
  })

  test('a malformed percent-escape in the path or the query is 400 bad_request, never read as U+FFFD (another name)', async () => {
    const call = appWith((app) => app.get('/users/:user', ({ params, query }: any) => ({ user: params.user, ...query }), { query: t.Object({ q: t.Optional(t.String()) }) }))
    for (const path of ['/users/50%', '/users/a%zz', '/users/%FF', '/users/%C0%AF', '/users/%E0%A4%A', '/users/a?q=%FF', '/users/a?q=50%']) {
      const r = await call(path)
      expect([path, r.status, r.json.error?.code]).toEqual([path, 400, 'bad_request'])
    }
    expect(await call('/users/%EF%BF%BD')).toEqual({ status: 200, json: { user: '\uFFFD' } })
    expect(await call('/users/50%25?q=a%2Fb%20c')).toEqual({ status: 200, json: { user: '50%', q: 'a/b c' } })
  })

  test('a route without a body schema refuses a body; an empty one is no body', async () => {
    const app: AnyElysia = new Elysia({ normalize: false })
      .use(errorHandler(createLogger('silent')))
      .use(jsonBody(1024))
      .use(routeContracts((): AnyElysia => app))
      .delete('/thing/:id', () => ({ ok: true }))
    const del = async (body?: string) => {
      const res = await app.handle(new Request('http://localhost/thing/1', { method: 'DELETE', body }))
      return { status: res.status, json: await res.json() }
    }
    expect(await del()).toEqual({ status: 200, json: { ok: true } })
    expect(await del('')).toEqual({ status: 200, json: { ok: true } })
    expect(await del('{"reason":"spam"}')).toEqual({
      status: 422,
      json: { error: { code: 'invalid_request', message: 'DELETE /thing/:id takes no body', details: [{ path: '/', message: 'unexpected body', in: 'body' }] } },
    })
  })
})
