import { every } from '../backoff'
import type { Logger } from '../logger'
import { NotAnswering, type DroppableDatabase } from './client'

/** How often the watch asks Postgres for an answer. */
const PING_EVERY_MS = 1000

export type DatabaseWatch = {
  /** False from a ping left unanswered until one is answered again. */
  answering: () => boolean
  /** How long (ms) since a ping was first left unanswered, 0 while Postgres answers. */
  unansweredFor: () => number
  stop: () => Promise<void>
}

/** A ping that got no answer at all (as opposed to a refusal, which is an answer). */
const unanswered = (err: unknown) => err instanceof NotAnswering || ['ERR_POSTGRES_CONNECTION_TIMEOUT', 'CONNECT_TIMEOUT'].includes((err as { code?: string })?.code ?? '')

/**
 * Notices a Postgres that stops answering without refusing anything: its host vanished, a network
 * partition or a stalled proxy drops the packets, and no reset comes. The drivers' queries then
 * wait on their open connections for as long as TCP keeps them (many minutes), while nothing
 * fails and nothing is logged: a worker's batches hang, its lag gauge keeping the last batch's
 * value, and an API node's requests hang. So the watch pings Postgres every second on a
 * connection of its own (see DroppableDatabase.ping), never queued behind the pool's work, so a
 * slow query does not count: only a `select 1` left unanswered for `timeoutMs` does. Then it drops
 * the pool's connections, which fails every query waiting on them with a transient error: a
 * runner logs it, sets its lag gauge to what waits and retries; a request is answered 503
 * `database_unavailable`. New connections fail after the same time (the connect timeout: see
 * connectBunSql) until Postgres answers again. A statement that was sent before may still commit
 * when the path comes back; a batch's checkpoint guard then refuses its retry (see design.md, "A
 * Postgres that stops answering").
 *
 * Logged once when Postgres stops answering, and once when it answers again. A refused ping
 * (Postgres down, too many clients) is an answer: the queries get that error themselves.
 */
export function watchDatabase(deps: {
  database: Pick<DroppableDatabase, 'ping' | 'dropConnections'>
  /** FANFARE_DATABASE_TIMEOUT_MS. */
  timeoutMs: number
  logger: Logger
  /** How often it pings; default every second (a test seam). */
  everyMs?: number
}): DatabaseWatch {
  let answering = true
  let since = 0
  const loop = every(
    deps.everyMs ?? PING_EVERY_MS,
    async () => {
      try {
        await deps.database.ping(deps.timeoutMs)
      } catch (err) {
        if (!unanswered(err) || !answering) return
        answering = false
        since = Date.now()
        deps.database.dropConnections()
        deps.logger.error(
          { timeoutMs: deps.timeoutMs },
          'Postgres does not answer (FANFARE_DATABASE_TIMEOUT_MS): dropped this process\'s connections, failing the queries that waited on them; new ones are opened until it answers again',
        )
        return
      }
      if (!answering) {
        answering = true
        deps.logger.info({ unansweredMs: Date.now() - since }, 'Postgres answers again')
      }
    },
    (err) => deps.logger.warn({ err }, 'database watch failed'),
  )
  return { answering: () => answering, unansweredFor: () => (answering ? 0 : Date.now() - since), stop: loop.stop }
}
