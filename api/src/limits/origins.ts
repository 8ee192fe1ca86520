import { Elysia } from 'elysia'
import { cors } from '@elysiajs/cors'
import { canonicalOrigin, parseOrigins } from '../../../core/net'
import { errorResponse } from '../errors'

/**
 * Which browser origins may call this API. `allowed` undefined: any. Otherwise an `Origin` must be
 * one of them, or the API's own (the request's `Host`: /docs calling /docs/json). A request
 * without `Origin` is not from a browser page of another site (browsers always send it on
 * cross-origin requests and WebSocket upgrades), so it passes: game servers and tools send none.
 */
export type OriginPolicy = {
  allows(origin: string | null, host: string | null): boolean
  /** The configured origins; undefined: any. */
  readonly allowed: readonly string[] | undefined
}

export function originPolicy(allowedOrigins: string | undefined): OriginPolicy {
  const list = allowedOrigins === undefined ? undefined : parseOrigins(allowedOrigins).origins
  const allowed = list === undefined || list.length === 0 ? undefined : new Set(list)
  return {
    allowed: allowed && [...allowed],
    allows(origin, host) {
      if (!allowed || origin === null) return true
      const canonical = canonicalOrigin(origin)
      if (canonical === undefined) return false
      return allowed.has(canonical) || (host !== null && new URL(canonical).host === host.toLowerCase())
    },
  }
}

/**
 * Origins for the whole app: a request (REST, preflight or WebSocket upgrade) whose `Origin` the
 * policy refuses gets 403 `origin_not_allowed` before anything else runs (cross-site WebSocket
 * hijacking: a page of another site opening a socket with the visitor's credentials); the others
 * get CORS headers from @elysiajs/cors, preflights included. Bearer tokens, not cookies, carry
 * credentials here, so no `Access-Control-Allow-Credentials`.
 */
export function originsPlugin(policy: OriginPolicy) {
  return new Elysia({ name: 'origins' })
    .onRequest(({ request }) => {
      const origin = request.headers.get('origin')
      if (!policy.allows(origin, request.headers.get('host'))) {
        return errorResponse(403, 'origin_not_allowed', `requests from ${origin} are not allowed (FANFARE_ALLOWED_ORIGINS)`, { origin })
      }
    })
    .use(
      cors({
        origin: policy.allowed === undefined ? true : (request: Request) => policy.allows(request.headers.get('origin'), request.headers.get('host')),
        methods: ['GET', 'POST', 'PUT', 'DELETE'],
        allowedHeaders: ['authorization', 'content-type'],
        exposeHeaders: ['retry-after', 'ratelimit', 'ratelimit-policy'],
        credentials: false,
        maxAge: 600,
      }),
    )
}
