import pino from 'pino'

export type Logger = pino.Logger

/** The one logger of a process: JSON lines on stdout. Components take a child. */
export function createLogger(level: string, base: Record<string, unknown> = {}): Logger {
  return pino({ level, base: { pid: process.pid, ...base }, timestamp: pino.stdTimeFunctions.isoTime })
}
