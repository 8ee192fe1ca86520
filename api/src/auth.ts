import { Elysia } from 'elysia'
import type { Config } from '../../core/config'
import type { Publisher } from '../../core/events'
import { safeEqual } from '../../core/secrets'
import { Forbidden, Unauthorized } from './errors'

/** What a route requires of the bearer token. */
export type Privilege = 'ingest' | 'admin'

/**
 * Who a token is: 'admin', 'ingest', or undefined when it matches neither. An unset token in the
 * config never matches. Used by REST (bearer header) and WebSocket (`?token=`) alike.
 */
export function identify(config: Pick<Config, 'FANFARE_INGEST_TOKEN' | 'FANFARE_ADMIN_TOKEN'>, token: string): Publisher | undefined {
  // Compare against both so the time taken does not tell which one matched.
  const admin = config.FANFARE_ADMIN_TOKEN !== undefined && safeEqual(token, config.FANFARE_ADMIN_TOKEN)
  const ingest = config.FANFARE_INGEST_TOKEN !== undefined && safeEqual(token, config.FANFARE_INGEST_TOKEN)
  return admin ? 'admin' : ingest ? 'ingest' : undefined
}

/**
 * Decides whether an Authorization header grants `required`; returns the caller's publisher
 * level. Missing or unknown token: 401. Ingest token on an admin route: 403.
 */
export function authorize(config: Config, header: string | undefined | null, required: Privilege): Publisher {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '')
  if (!m) throw new Unauthorized('missing bearer token (Authorization: Bearer <token>)')
  const who = identify(config, m[1])
  if (!who) throw new Unauthorized('unknown bearer token')
  if (required === 'admin' && who !== 'admin') throw new Forbidden('this route needs the admin token')
  return who
}

/**
 * Named auth plugin. Routes opt in with `{ auth: 'ingest' }` or `{ auth: 'admin' }` and receive
 * `publisher`, the privilege of the caller (the admin token is accepted wherever ingest is).
 */
export function authPlugin(config: Config) {
  return new Elysia({ name: 'auth', seed: `${config.FANFARE_STREAM}/${config.FANFARE_SUBJECT_PREFIX}` }).macro({
    auth: (required: Privilege) => ({
      detail: { security: [{ bearer: [] }] },
      // transform runs before body validation: a caller without the right token learns nothing
      // about the body (401/403 before 422).
      transform: ({ headers }) => void authorize(config, headers.authorization, required),
      resolve: ({ headers }) => ({ publisher: authorize(config, headers.authorization, required) }),
    }),
  })
}
