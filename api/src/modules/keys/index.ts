import { Elysia } from 'elysia'
import { parseDateTime } from '../../../../core/validation'
import type { AuthPlugin } from '../../auth/plugin'
import type { KeyStore } from '../../auth/keys'
import { principalId, type Scope } from '../../auth/principal'
import type { Revocations } from '../../auth/revocations'
import { BodyErrors, ErrorResponse } from '../../error-model'
import { Invalid, NotFound } from '../../errors'
import type { Audit } from '../audit/service'
import { CreatedKey, CreateKeyBody, grantableScopes, KeyInfo, KeyList, KeyParams } from './model'

const denied = { 401: ErrorResponse, 403: ErrorResponse }

/** The scopes of a create request, or 422 naming the first one a key cannot hold. */
function checkScopes(scopes: string[]): Scope[] {
  scopes.forEach((scope, i) => {
    if (!(grantableScopes as string[]).includes(scope)) {
      throw new Invalid('invalid_request', `unknown scope ${JSON.stringify(scope)}: a key may hold ${grantableScopes.join(', ')}`, [
        { path: `/scopes/${i}`, message: `expected one of ${grantableScopes.join(', ')}`, in: 'body' },
      ])
    }
  })
  return scopes as Scope[]
}

/** An expiry, which must lie ahead: a key born expired is a mistake, not a request. */
function checkExpiry(expiresAt: string | undefined, now: number): Date | undefined {
  if (expiresAt === undefined) return undefined
  const at = parseDateTime(expiresAt)
  if (at === undefined) {
    throw new Invalid('invalid_request', `expiresAt ${expiresAt} names no instant of the years 1-9999`, [
      { path: '/expiresAt', message: 'must be an ISO 8601 date-time with a time zone naming a real instant of the years 1-9999', in: 'body' },
    ])
  }
  if (!(at.getTime() > now)) {
    throw new Invalid('invalid_request', `expiresAt ${expiresAt} is not in the future`, [{ path: '/expiresAt', message: 'must be in the future', in: 'body' }])
  }
  return at
}

/**
 * /admin/keys: API keys of game servers and services. Creating and revoking need `admin:write`,
 * listing `admin:read`. A key's secret is returned once, by the create call; only its digest is
 * kept. Revoking refuses the key at once on every node and closes the sockets that use it (4003).
 */
export function keysModule(deps: { auth: AuthPlugin; keys: KeyStore; revocations: Pick<Revocations, 'announceKey'>; audit: Audit; now?: () => number }) {
  const now = deps.now ?? Date.now
  return new Elysia({ prefix: '/admin', detail: { tags: ['admin'] } })
    .use(deps.auth)
    .post(
      '/keys',
      async ({ body, principal, status }) => {
        const scopes = checkScopes(body.scopes)
        const expiresAt = checkExpiry(body.expiresAt, now())
        const created = await deps.keys.create({ name: body.name, scopes, expiresAt, createdBy: principalId(principal) })
        const { id, name, createdAt, key } = created
        await deps.audit.record(principal, 'key.created', `key:${id}`, { name, scopes: created.scopes, expiresAt: created.expiresAt })
        return status(201, { id, name, scopes: created.scopes, key, createdAt, expiresAt: created.expiresAt })
      },
      {
        auth: 'admin:write',
        body: CreateKeyBody,
        response: { 201: CreatedKey, 422: ErrorResponse, 503: ErrorResponse, ...BodyErrors, ...denied },
        detail: {
          summary: 'Create an API key',
          description: `The response is the only time the secret (\`key\`) is shown. Scopes: ${grantableScopes.join(', ')} (422 for any other). Use it as \`Authorization: Bearer <key>\` on REST and \`?token=<key>\` on the WebSocket.`,
        },
      },
    )
    .get('/keys', async () => ({ keys: await deps.keys.list() }), {
      auth: 'admin:read',
      response: { 200: KeyList, ...denied },
      detail: { summary: 'List API keys (never their secrets)' },
    })
    .delete(
      '/keys/:id',
      async ({ params, principal }) => {
        const revokedNow = await deps.keys.revoke(params.id)
        const key = (await deps.keys.list()).find((k) => k.id === params.id)
        if (!key) throw new NotFound('unknown_key', `no API key ${params.id}`)
        // Announced even when the key was already revoked: a repeat after a failure between the
        // Postgres write and the broadcast reaches the other nodes' sockets at once.
        await deps.revocations.announceKey(key.id)
        await deps.audit.record(principal, 'key.revoked', `key:${key.id}`, { name: key.name, revokedAt: key.revokedAt, alreadyRevoked: !revokedNow })
        return key
      },
      {
        auth: 'admin:write',
        params: KeyParams,
        response: { 200: KeyInfo, 404: ErrorResponse, 503: ErrorResponse, ...denied },
        detail: {
          summary: 'Revoke an API key',
          description:
            'Marks the key revoked (its row stays, for the audit log): every node refuses it from now on (401 `revoked`) and closes WebSockets using it with 4003. Revoking a revoked key answers 200 again; 404 `unknown_key`.',
        },
      },
    )
}
