import { Elysia } from 'elysia'
import type { Config } from '../../../core/config'
import { Forbidden, Unauthorized } from '../errors'
import { chargeRequest, type RateLimits } from '../limits'
import type { Authenticator } from './authenticate'
import { ANONYMOUS, isAdminReader, hasScope, type Principal } from './principal'

/**
 * What a route needs of its caller:
 * - `viewer`: anyone allowed to connect (anonymous too, unless FANFARE_ANONYMOUS is off); the
 *   route checks the resource itself (a private room);
 * - `principal`: a user or a key (publishing: the ingest service checks each event type);
 * - `admin:read` / `admin:write`: a key with that scope (`admin:write` implies read). Users and
 *   publish-only keys get 403.
 */
export type Need = 'viewer' | 'principal' | 'admin:read' | 'admin:write'

/** The bearer token of an Authorization header; undefined when there is none. */
export function bearerOf(header: string | null | undefined): string | undefined {
  if (!header) return undefined
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header)
  if (!m) throw new Unauthorized('malformed Authorization header (expected: Bearer <token>)')
  return m[1]
}

/** Decides whether `p` meets `need`; throws 401/403 otherwise. */
export function demand(p: Principal, need: Need): Principal {
  switch (need) {
    case 'viewer':
      return p
    case 'principal':
      if (p.kind === 'anonymous') throw new Unauthorized('this route needs a token (Authorization: Bearer <token>)')
      return p
    case 'admin:read':
    case 'admin:write':
      if (p.kind === 'anonymous') throw new Unauthorized('this route needs an API key (Authorization: Bearer <key>)')
      if (need === 'admin:read' ? !isAdminReader(p) : !hasScope(p, 'admin:write')) {
        throw new Forbidden(`this route needs an API key with the ${need} scope`)
      }
      return p
    default: {
      const never: never = need
      throw new Error(`unknown need ${never}`)
    }
  }
}

let plugins = 0

/**
 * The auth plugin. Routes opt in with `{ auth: <Need> }` and receive `principal`. The credential is
 * checked before the body is validated (transform), so a caller without the right one learns
 * nothing about the body: 401/403 come before 422.
 */
export type AuthPlugin = ReturnType<typeof authPlugin>

export function authPlugin(deps: { authenticator: Authenticator; config: Pick<Config, 'FANFARE_ANONYMOUS'>; rates?: RateLimits }) {
  const resolved = new WeakMap<Request, Principal>()
  const identify = async (request: Request): Promise<Principal> => {
    const known = resolved.get(request)
    if (known) return known
    const token = bearerOf(request.headers.get('authorization'))
    let p: Principal
    if (token === undefined) {
      if (deps.config.FANFARE_ANONYMOUS === 'off') throw new Unauthorized('this server needs a token (Authorization: Bearer <token>)')
      p = ANONYMOUS
    } else {
      p = await deps.authenticator.authenticate(token)
    }
    resolved.set(request, p)
    return p
  }
  return new Elysia({ name: 'auth', seed: ++plugins }).macro({
    auth: (need: Need) => ({
      detail: need === 'viewer' ? {} : { security: [{ bearer: [] }] },
      transform: async ({ request, body }) => {
        const p = demand(await identify(request), need)
        // Charged once known, before the body is validated: a bad request costs its caller too (429 with Retry-After).
        if (deps.rates) chargeRequest(deps.rates, p, body)
      },
      resolve: async ({ request }) => ({ principal: demand(await identify(request), need) }),
    }),
  })
}
