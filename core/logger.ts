import pino from 'pino'
import { prettyFactory } from 'pino-pretty'
import { isDbError, loggedDbError } from './db/errors'
import { traceFieldsOfActiveSpan } from './tracing'

export type Logger = pino.Logger

/** Where log lines go: stdout by default (tests pass their own). */
export type LogOutput = { write: (line: string) => unknown; isTTY?: boolean }

export type LogOptions = {
  /** `json`, `pretty`, or `auto` (pretty when the output is a terminal). Default `auto`. */
  format?: 'auto' | 'json' | 'pretty'
  output?: LogOutput
}

/**
 * pino's error serializer, except for database errors: drizzle wraps them as `Failed query: <sql>
 * params: <params>` (in the message, the stack and its own fields), which put event data (player
 * names, chat text) in the logs and buried Postgres' reason at the end. They are logged as
 * loggedDbError says: the SQLSTATE and Postgres' message.
 */
function serializeError(err: unknown): unknown {
  return err instanceof Error && isDbError(err) ? loggedDbError(err) : pino.stdSerializers.err(err as Error)
}

/**
 * The one logger of a process: JSON lines on stdout, or human-readable lines when stdout is a
 * terminal (FANFARE_LOG_FORMAT). Components take a child. A line written inside an active span
 * carries its `trace_id` and `span_id`. Pretty lines are formatted in this thread, synchronously:
 * pino transports run in worker threads, which break on Bun.
 */
export function createLogger(level: string, base: Record<string, unknown> = {}, opts: LogOptions = {}): Logger {
  const output = opts.output ?? process.stdout
  const format = opts.format ?? 'auto'
  const pretty = format === 'pretty' || (format === 'auto' && output.isTTY === true)
  const options: pino.LoggerOptions = {
    level,
    base: { pid: process.pid, ...base },
    timestamp: pino.stdTimeFunctions.isoTime,
    mixin: traceFieldsOfActiveSpan,
    serializers: { err: serializeError },
  }
  if (!pretty) return opts.output ? pino(options, { write: (line: string) => void output.write(line) }) : pino(options)
  const format_ = prettyFactory({ colorize: output.isTTY === true, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname' })
  return pino(options, { write: (line: string) => void output.write(format_(line)) })
}
