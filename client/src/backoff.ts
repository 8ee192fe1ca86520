/**
 * "Full jitter" exponential backoff (AWS Architecture Blog, "Exponential Backoff and Jitter"): a
 * wait drawn uniformly from 0 to min(max, min * 2^attempt). Clients that lost the same node at the
 * same moment spread over the whole interval instead of coming back in waves.
 */
export function fullJitter(attempt: number, opts: { minMs: number; maxMs: number }, random: () => number = Math.random): number {
  const cap = Math.min(opts.maxMs, opts.minMs * 2 ** Math.min(attempt, 30))
  return Math.floor(random() * cap)
}

/** The wait a 4029 close asks for: its reason reads `<code>: reconnect after <n> ms`. */
export function waitFromReason(reason: string): number | undefined {
  const m = /after (\d+) ms/.exec(reason)
  return m ? serverWait(Number(m[1])) : undefined
}

/** The longest delay a timer holds: setTimeout (browsers, Bun, Node) runs a longer one after 1 ms. */
export const MAX_TIMER_MS = 2 ** 31 - 1

/**
 * A wait the server asked for (`retryAfterMs`, a 4029 reason) as a delay a timer can hold: a
 * number that is not a finite, non-negative one is ignored (undefined), a longer one is capped.
 * Unchecked, a server asking for more than 2^31-1 ms would get a retry loop 1 ms apart.
 */
export function serverWait(ms: unknown): number | undefined {
  return typeof ms === 'number' && Number.isFinite(ms) && ms >= 0 ? Math.min(ms, MAX_TIMER_MS) : undefined
}
