/**
 * A token bucket: up to `capacity` actions at once, refilled at `perSecond`. The clock is passed in
 * so tests need no waiting.
 */
export type TokenBucket = {
  /** Spends `n` tokens (default 1) and returns 0, or returns the milliseconds until `n` are there (nothing spent). */
  take: (n?: number) => number
  /** Spends `n` tokens (default 1) even if fewer are there: the debt is paid by waiting longer. */
  spend: (n?: number) => void
  /** Puts `n` tokens back (never above `capacity`): what a refused command was charged beyond its price. */
  give: (n: number) => void
  /** The milliseconds until `n` tokens are there (0: now); spends nothing. */
  wait: (n?: number) => number
  /** Whether the bucket is full: then it is no different from a new one (and may be forgotten). */
  full: () => boolean
  /** The tokens there now (negative: a debt, see `spend`). */
  available: () => number
  readonly capacity: number
  readonly perSecond: number
}

export function tokenBucket(opts: { capacity: number; perSecond: number; now?: () => number }): TokenBucket {
  const now = opts.now ?? (() => performance.now())
  let tokens = opts.capacity
  let at = now()
  const refill = () => {
    const t = now()
    tokens = Math.min(opts.capacity, tokens + ((t - at) * opts.perSecond) / 1000)
    at = t
  }
  const wait = (n = 1) => {
    refill()
    return tokens >= n ? 0 : Math.ceil(((n - tokens) * 1000) / opts.perSecond)
  }
  return {
    capacity: opts.capacity,
    perSecond: opts.perSecond,
    wait,
    take(n = 1) {
      const w = wait(n)
      if (w === 0) tokens -= n
      return w
    },
    spend(n = 1) {
      refill()
      tokens -= n
    },
    give(n) {
      refill()
      tokens = Math.min(opts.capacity, tokens + n)
    },
    full() {
      refill()
      return tokens >= opts.capacity
    },
    available() {
      refill()
      return tokens
    },
  }
}

