import { Elysia } from 'elysia'
import type { Config } from '../../../core/config'
import { Forbidden, RateLimited, retryLater, Unauthorized } from '../errors'
import { chargeRequest, checkCredential, rateLimitFields, refusedAsAWhole, settleRefused, type Limits } from '../limits'
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

/**
 * The security the OpenAPI document declares for a route of `need`, as the node enforces it: a
 * viewer route takes a credential or none (`{}`: the answer may depend on it, a private room), and
 * needs one where anonymous callers are off; admin routes name the scope they need (OpenAPI 3.1
 * lets a bearer scheme's requirement list roles; `admin:write` includes `admin:read`).
 */
export function declaredSecurity(need: Need, anonymous: Config['FANFARE_ANONYMOUS']): Record<string, string[]>[] {
  switch (need) {
    case 'viewer':
      return anonymous === 'off' ? [{ bearer: [] }] : [{}, { bearer: [] }]
    case 'principal':
      return [{ bearer: [] }]
    case 'admin:read':
    case 'admin:write':
      return [{ bearer: [need] }]
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

export function authPlugin(deps: {
  authenticator: Authenticator
  config: Pick<Config, 'FANFARE_ANONYMOUS'>
  /** Each caller's budget, and each address's budget of failed credentials (see README "Limits"). */
  limits?: Pick<Limits, 'rates' | 'authFailures' | 'clientAddress'>
}) {
  const resolved = new WeakMap<Request, Principal>()
  const verify = async (header: string) => {
    const token = bearerOf(header)
    return token === undefined ? ANONYMOUS : deps.authenticator.authenticate(token)
  }
  type Server = { requestIP(r: Request): { address: string } | null } | null
  const addressOf = (request: Request, server: Server, limits: NonNullable<typeof deps.limits>) =>
    limits.clientAddress(server?.requestIP(request)?.address, request.headers.get('x-forwarded-for'))
  const identify = async (request: Request, server: Server): Promise<Principal> => {
    const known = resolved.get(request)
    if (known) return known
    const header = request.headers.get('authorization')
    let p: Principal
    if (!header) {
      // Refused by `admit` where anonymous callers are off: known by their address till then, so
      // that a request without a token costs that address one there too (see transform).
      p = ANONYMOUS
    } else if (deps.limits) {
      p = await checkCredential(deps.limits.authFailures, addressOf(request, server, deps.limits), () => verify(header))
    } else {
      p = await verify(header)
    }
    resolved.set(request, p)
    return p
  }
  /** `demand`, and no anonymous caller at all where FANFARE_ANONYMOUS is off. */
  const admit = (p: Principal, need: Need): Principal => {
    if (p.kind === 'anonymous' && deps.config.FANFARE_ANONYMOUS === 'off') throw new Unauthorized('this server needs a token (Authorization: Bearer <token>)')
    return demand(p, need)
  }
  /** What each request was charged, to settle it if it is refused as a whole. */
  const charged = new WeakMap<Request, { p: Principal; cost: number; address?: string }>()
  /**
   * Charges a request whose body could not be read (400 `bad_json`/`too_deep`, 413 past the limit
   * while reading), or whose URL could not (400 `bad_request`, a malformed percent-escape: the
   * route-contracts plugin's `transform` refuses it before ours, its body already parsed): it failed
   * before this `transform`, which charges every other request. It costs its
   * caller one, as any request refused as a whole, so a flood of them is bounded by the same budget
   * (README "Limits"). The caller is who the credential says (an anonymous caller: its address),
   * whatever the route needs: the body's error is the answer, as before, unless a budget refuses
   * (429, the credential's failures included). Returns that 429, else undefined (the 400 stands).
   */
  const chargeUnreadable = async (request: Request, server: Server, limits: NonNullable<typeof deps.limits>): Promise<Response | undefined> => {
    try {
      const p = await identify(request, server)
      const address = p.kind === 'anonymous' ? addressOf(request, server, limits) : undefined
      charged.set(request, { p, cost: chargeRequest(limits.rates, p, undefined, address).cost, address })
      return undefined
    } catch (err) {
      // A credential that is not valid (401) or could not be checked (database away): nobody to charge.
      return err instanceof RateLimited ? retryLater(err) : undefined
    }
  }
  return new Elysia({ name: 'auth', seed: ++plugins }).macro({
    auth: (need: Need) => ({
      detail: { security: declaredSecurity(need, deps.config.FANFARE_ANONYMOUS) },
      transform: async ({ request, body, server, set }) => {
        const caller = await identify(request, server)
        if (!deps.limits) return void admit(caller, need)
        // Charged once known, before the body is validated: a bad request costs its caller too (429
        // with Retry-After). Anonymous callers are known by their address only.
        const address = caller.kind === 'anonymous' ? addressOf(request, server, deps.limits) : undefined
        let p: Principal
        try {
          p = admit(caller, need)
        } catch (err) {
          // Not what the route needs (401 without a token, or any request without one where
          // anonymous callers are off; 403): its body was read all the same, so
          // it costs one, as any refused request (else a flood of them would be free); past the
          // budget 429.
          charged.set(request, { p: caller, cost: chargeRequest(deps.limits.rates, caller, undefined, address).cost, address })
          throw err
        }
        const { cost, standing } = chargeRequest(deps.limits.rates, p, body, address)
        charged.set(request, { p, cost, address })
        Object.assign(set.headers, rateLimitFields(standing))
      },
      // A batch refused as a whole (422, 403) stored nothing: it costs one, not one per event.
      // Settled as soon as the answer is made (afterResponse; a local error hook never runs: the
      // app's global error handler answers first): a caller's next request comes a round trip
      // after it.
      afterResponse: ({ request, error }: { request: Request; error?: unknown }) => {
        const c = charged.get(request)
        charged.delete(request)
        if (c && deps.limits && refusedAsAWhole(error)) settleRefused(deps.limits.rates, c.p, c.cost, c.address)
      },
      // Runs after the error plugin's answer too: there, a body or a URL that could not be read is charged.
      mapResponse: ({ request, server, code }: { request: Request; server: Server; code?: unknown }) =>
        (code === 'PARSE' || code === 'bad_request') && deps.limits && !charged.has(request) ? chargeUnreadable(request, server, deps.limits) : undefined,
      resolve: async ({ request, server }) => ({ principal: admit(await identify(request, server), need) }),
    }),
  })
}
