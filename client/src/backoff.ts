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
  return m ? Number(m[1]) : undefined
}
