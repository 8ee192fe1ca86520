import { Elysia, ElysiaCustomStatusResponse, type AnyElysia } from 'elysia'
import { Kind, type TSchema } from '@sinclair/typebox'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import { Value } from '@sinclair/typebox/value'
import { createMirror } from 'exact-mirror'
import { UNKNOWN_FIELD } from '../../core/validation'
import { errorResponse, Invalid } from './errors'

/** A copy of a value with only the fields its schema declares, at any depth. */
type Narrow = (value: unknown) => unknown

/**
 * exact-mirror is what Elysia's normalisation used (compiled once per schema: the same output as
 * before, at a few µs per answer); TypeBox's slower Value.Clean stands in for a schema it cannot
 * compile, as in Elysia.
 */
function narrowerOf(schema: TSchema): Narrow {
  try {
    return createMirror(schema, { TypeCompiler }) as Narrow
  } catch {
    return (value) => Value.Clean(schema, Value.Clone(value))
  }
}

/** What one route declares, as far as these checks need it. */
type Contract = { query: boolean; body: boolean; responses: Record<number, Narrow> }

/** A handler's `status(code, value)` answer, as Elysia hands it to afterHandle hooks. */
type StatusAnswer = { code: number; response: unknown }
const isStatusAnswer = (r: unknown): r is StatusAnswer => r instanceof ElysiaCustomStatusResponse

/** Codes for the statuses a library may answer with plain text. */
const TEXT_ERROR_CODES: Record<number, string> = { 400: 'bad_request', 401: 'unauthorized', 403: 'forbidden', 404: 'not_found', 405: 'method_not_allowed' }

/** Plain JSON-ish values only: a Response, a stream or a generator is sent as it is. */
const isPlainData = (r: unknown): r is object =>
  typeof r === 'object' && r !== null && !(r instanceof Response) && !(r instanceof ReadableStream) && typeof (r as { next?: unknown }).next !== 'function'

/**
 * Whether a URL holds an escape that is not `%XX` of UTF-8 (`%`, `%zz`, `%FF`, an overlong form):
 * Bun's router and URLSearchParams read each as U+FFFD, so `/admin/users/50%/revoke` revoked
 * user "50\uFFFD" and `%FF`, `%C0%AF` and `%EF%BF%BD` named one player.
 */
function malformedEscape(url: string): boolean {
  if (!url.includes('%')) return false
  try {
    decodeURIComponent(url)
    return false
  } catch {
    return true
  }
}

/**
 * Holds every route to what it declares, where Elysia does not once its normalisation is off
 * (createApp turns it off so that unknown body and query fields are refused rather than dropped):
 *
 * - A route that declares no query parameters takes none: `?anything` is 422 `invalid_request`
 *   naming it, like an unknown field (a route with a query schema has Elysia check it). A route
 *   that declares no body takes none either: `DELETE ... { "reason": "spam" }` must not answer
 *   202 as if the reason were kept. A query parameter given twice (`?limit=1&limit=2`) is 422
 *   `invalid_request` naming it: no route takes a list that way, and answering with one of the
 *   values would be a guess the caller cannot see. Checked before the handler and after
 *   authentication, so 401/403 still come first.
 * - A URL with a malformed percent-escape is 400 `bad_request` (see malformedEscape), before
 *   anything else reads it: never taken for another name.
 * - An error a library answers as plain text is given the one error shape (see ErrorBody).
 * - Answers are narrowed to the route's response schema: a field the schema does not name is
 *   dropped, at any depth, as Elysia's normalisation did. Without this a row with a new column or
 *   a record a newer worker wrote would leak undeclared fields (Elysia checks only the top level
 *   of a response against extras) or fail its own response check.
 *
 * `app` is read on the first request, once every route is registered. Register this plugin before
 * the routes: Elysia applies a hook only to routes added after it.
 */
export function routeContracts(app: () => AnyElysia) {
  let table: Map<string, Contract> | undefined
  const contractOf = (method: string, route: string) => {
    table ??= new Map(
      app().routes.map((r) => {
        const hooks = (r.hooks ?? {}) as { query?: unknown; body?: unknown; response?: unknown }
        const response = hooks.response
        // `response: schema` means 200; `response: { 200: ..., 404: ... }` one per status.
        const schemas = (!response || typeof response !== 'object' ? {} : Kind in response ? { 200: response } : response) as Record<number, TSchema>
        const responses = Object.fromEntries(Object.entries(schemas).map(([status, schema]) => [status, narrowerOf(schema)]))
        return [`${r.method} ${r.path}`, { query: hooks.query !== undefined, body: hooks.body !== undefined, responses }]
      }),
    )
    return table.get(`${method} ${route}`)
  }
  return new Elysia({ name: 'route-contracts' })
    // Before the parameters are validated: one router reads such an escape as U+FFFD, another as
    // no value at all (a 422 "Expected string" that does not say what is wrong).
    .onTransform({ as: 'global' }, ({ request }) => {
      if (malformedEscape(request.url)) {
        throw new Invalid('bad_request', 'the URL holds a malformed percent-escape (each % must start %XX of UTF-8: encode names with encodeURIComponent)', undefined, 400)
      }
    })
    .onBeforeHandle({ as: 'global' }, ({ request, route, body }) => {
      const contract = contractOf(request.method, route)
      if (!contract) return
      if (!contract.body && body !== undefined) {
        throw new Invalid('invalid_request', `${request.method} ${route} takes no body`, [{ path: '/', message: 'unexpected body', in: 'body' }])
      }
      const url = request.url
      const query = url.indexOf('?')
      if (query === -1) return
      // One parameter at most (no '&' after the '?'): none is given twice, and the route's schema
      // checks its name. The common case of a route with a query (a WebSocket's `?token=`): the
      // URL is not parsed a second time for nothing.
      if (contract.query && url.indexOf('&', query) === -1) return
      // Everything past the '?' as Elysia's query parser reads it: new URL() would drop a '#...'
      // (a raw request line may carry one) as a fragment, and with it `&a=2` that Elysia reads.
      const names = [...new URLSearchParams(url.slice(query + 1)).keys()]
      if (names.length === 0) return
      if (!contract.query) throw new Invalid('invalid_request', `unknown query parameter ${names[0]}`, [{ path: `/${names[0]}`, message: UNKNOWN_FIELD, in: 'query' }])
      const twice = names.find((name, i) => names.indexOf(name) !== i)
      if (twice !== undefined) {
        throw new Invalid('invalid_request', `query parameter ${twice} is given more than once`, [{ path: `/${twice}`, message: 'given more than once', in: 'query' }])
      }
    })
    .onAfterHandle({ as: 'global' }, ({ request, route, response, set }) => {
      const answer = isStatusAnswer(response) ? response : undefined
      // An error answered as plain text (Elysia's WebSocket route does so for an upgrade it cannot
      // complete) gets the one error shape too.
      if (answer && answer.code >= 400 && typeof answer.response === 'string') {
        return errorResponse(answer.code, TEXT_ERROR_CODES[answer.code] ?? 'error', answer.response)
      }
      const value = answer ? answer.response : response
      if (!isPlainData(value)) return
      const status = answer?.code ?? (typeof set.status === 'number' ? set.status : 200)
      const narrow = contractOf(request.method, route)?.responses[status]
      if (!narrow) return
      const narrowed = narrow(value)
      if (answer) answer.response = narrowed
      else return narrowed
    })
}
