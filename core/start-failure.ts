import { DatabaseUnreachable, NotMigrated } from './db/client'
import { NatsUnreachable } from './nats'
import { ListenFailed } from './listen'

/**
 * What a node prints after `failed to start: `. A failure whose message says what to fix (NATS_URL
 * leads to no usable server, a database URL to no usable database, the database is not migrated,
 * a port is taken) is that message, on one line: a stack trace under it only hid it. Anything else
 * is a bug, printed with its stack.
 */
export function startFailure(err: unknown): string {
  if (err instanceof NatsUnreachable || err instanceof DatabaseUnreachable || err instanceof NotMigrated || err instanceof ListenFailed) return `${err.name}: ${err.message}`
  return (err as Error)?.stack ?? String(err)
}
