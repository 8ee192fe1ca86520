/**
 * Who is calling. Three kinds, never confused: players and viewers (users, from a JWT issued by the
 * game's own auth), game servers and services (API keys created by admins; the bootstrap tokens
 * FANFARE_INGEST_TOKEN and FANFARE_ADMIN_TOKEN are keys too), and anonymous viewers.
 */
export type Principal = UserPrincipal | KeyPrincipal | AnonymousPrincipal

/** A player or viewer, from a verified JWT. */
export type UserPrincipal = {
  kind: 'user'
  /** The token's `sub`. */
  id: string
  /** Display name (`name` claim). */
  name?: string
  /** e.g. `moderator`. */
  roles: string[]
  /** Patterns (`*` wildcards) of private channels the user may subscribe to, e.g. `chat:vip-*`. */
  channels: string[]
  /** When the token expires, ms since the epoch. */
  expiresAt: number
  /** When the token was issued (`iat`), ms since the epoch; undefined when the token has none. */
  issuedAt?: number
  jti?: string
}

/** A game server or service: an API key, or one of the bootstrap tokens (`root`). */
export type KeyPrincipal = {
  kind: 'key'
  /** The key's id (`key_...`), or `ingest` / `admin` for the bootstrap tokens. */
  id: string
  name: string
  scopes: Scope[]
  /** ms since the epoch; undefined: never. */
  expiresAt?: number
  root?: 'ingest' | 'admin' | 'system'
}

export type AnonymousPrincipal = { kind: 'anonymous' }

/** What a key may do. `publish:*` publishes any type a key may publish; see permissions.ts. */
export type Scope = `publish:${string}` | 'admin:read' | 'admin:write' | 'system:presence'

export const ANONYMOUS: AnonymousPrincipal = { kind: 'anonymous' }

/**
 * The bootstrap tokens as keys: ingest publishes, admin does everything. `system` is the API
 * nodes themselves (presence samples): it has no credential, nothing outside the process can be it.
 */
export const rootKey = (which: 'ingest' | 'admin' | 'system'): KeyPrincipal =>
  which === 'admin'
    ? { kind: 'key', id: 'admin', name: 'FANFARE_ADMIN_TOKEN', scopes: ['publish:*', 'admin:read', 'admin:write'], root: 'admin' }
    : which === 'ingest'
      ? { kind: 'key', id: 'ingest', name: 'FANFARE_INGEST_TOKEN', scopes: ['publish:*'], root: 'ingest' }
      : { kind: 'key', id: 'system', name: 'API nodes', scopes: ['system:presence'], root: 'system' }

/**
 * The principal's id as recorded with what it does (an event's `by`, the audit log's actor):
 * `u:<sub>` for users, `k:<key id>` for keys, `ingest` / `admin` for the bootstrap tokens, and
 * `anonymous`. Event ids are de-duplicated per principal id.
 */
export function principalId(p: Principal): string {
  switch (p.kind) {
    case 'user':
      return `u:${p.id}`
    case 'key':
      return p.root ?? `k:${p.id}`
    case 'anonymous':
      return 'anonymous'
    default: {
      const never: never = p
      throw new Error(`unknown principal ${JSON.stringify(never)}`)
    }
  }
}

/** Whether a key holds a scope (`publish:*` covers every `publish:<type>`). */
export function hasScope(p: Principal, scope: Scope): boolean {
  if (p.kind !== 'key') return false
  return p.scopes.includes(scope) || (scope.startsWith('publish:') && p.scopes.includes('publish:*'))
}

/** Admin reads: a key with `admin:read` or `admin:write`. */
export const isAdminReader = (p: Principal) => hasScope(p, 'admin:read') || hasScope(p, 'admin:write')
