import { FanfareError } from './errors'

/**
 * "Full jitter" exponential backoff (AWS Architecture Blog, "Exponential Backoff and Jitter"): a
 * wait drawn uniformly from 0 to min(max, min * 2^attempt). Clients that lost the same node at the
 * same moment spread over the whole interval instead of coming back in waves.
 */
export function fullJitter(attempt: number, opts: { minMs: number; maxMs: number }, random: () => number = Math.random): number {
  const cap = Math.min(opts.maxMs, opts.minMs * 2 ** Math.min(attempt, 30))
  return Math.floor(random() * cap)
}

/** The wait a 4029 close asks for: its reason reads `<code>: reconnect after <n> ms`; capped at `maxMs` (see `serverWait`). */
export function waitFromReason(reason: string, maxMs: number): number | undefined {
  const m = /after (\d+) ms/.exec(reason)
  return m ? serverWait(Number(m[1]), maxMs) : undefined
}

/** The longest delay a timer holds: setTimeout (browsers, Bun, Node) runs a longer one after 1 ms. */
export const MAX_TIMER_MS = 2 ** 31 - 1

/**
 * A wait the server asked for (`retryAfterMs`, a 4029 reason) as a delay to follow: a number that
 * is not a finite, non-negative one is ignored (undefined), a longer one than `maxMs` (the client's
 * `maxServerWaitMs`) is cut to it. Followed as asked, a buggy or hostile server could park a
 * subscribe, the publishes or the reconnect for up to 2^31-1 ms (~24 days); past that a timer
 * fires at once (a retry loop 1 ms apart).
 */
export function serverWait(ms: unknown, maxMs: number): number | undefined {
  return typeof ms === 'number' && Number.isFinite(ms) && ms >= 0 ? Math.min(ms, maxMs, MAX_TIMER_MS) : undefined
}

/** The wait a refusal (an `error` frame's error) asks for: its `retryAfterMs`, else its details' one (see `serverWait`). */
export function retryAfter(error: { retryAfterMs?: unknown; details?: unknown }, maxMs: number): number | undefined {
  return serverWait(error.retryAfterMs, maxMs) ?? serverWait((error.details as { retryAfterMs?: unknown } | undefined)?.retryAfterMs, maxMs)
}

/**
 * The longest wait a backoff draws (10 minutes): `backoff.minMs` and `backoff.maxMs` past it,
 * `Infinity` included, are that. A longer wait is no gentler on a server that came back (full
 * jitter already spreads a fleet's reconnects over the whole interval) and leaves a client offline
 * for hours, or ~24 days at a timer's limit, after one blip.
 */
export const MAX_BACKOFF_MS = 600_000

/**
 * A timing option (ms) as a delay a timer can hold, one rule for all of them: unset gives
 * `fallback`; `Infinity`, like anything longer than `longest` (by default what a timer holds,
 * 2^31-1 ms, ~24 days; past it setTimeout fires at once: so Infinity means no limit), is `longest`;
 * anything but a positive number (negative, zero, NaN, a string) is refused at once, naming the option.
 */
export function timingOption(name: string, value: unknown, fallback: number, longest: number = MAX_TIMER_MS): number {
  if (value === undefined) return fallback
  if (typeof value !== 'number' || Number.isNaN(value) || value <= 0) {
    const infinity = longest >= MAX_TIMER_MS ? 'Infinity: no limit' : `at most ${longest}, Infinity: that`
    throw new FanfareError('invalid_options', `${name} must be a positive number of milliseconds (${infinity}), not ${typeof value === 'string' ? JSON.stringify(value) : String(value)}`)
  }
  return Math.min(value, longest, MAX_TIMER_MS)
}
