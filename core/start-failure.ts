/**
 * A failure at start whose message says what to fix (NATS_URL leads to no usable server, a database
 * URL to no usable database, the database is not migrated, a port is taken, a data directory is
 * held by another process, the configuration is invalid): the process prints it on its own, since
 * a stack trace under it only hid it. An error class for such a failure extends this one, and every
 * start (the API's, the workers', npm start's) prints it so; nothing else lists it.
 */
export class StartFailure extends Error {}

/**
 * What a process prints after `failed to start: `. A StartFailure is its message, after its name
 * unless `named` is false (npm start's one-process mode: the name helps an operator of split nodes
 * search, not someone trying Fanfare out). Anything else is a bug, printed with its stack.
 */
export function startFailure(err: unknown, { named = true }: { named?: boolean } = {}): string {
  if (err instanceof StartFailure) return named ? `${err.name}: ${err.message}` : err.message
  return (err as Error)?.stack ?? String(err)
}
