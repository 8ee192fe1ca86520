/**
 * A token bucket: up to `capacity` actions at once, refilled at `perSecond`. `take` spends one
 * token and returns 0, or returns how many milliseconds until one is available (nothing spent).
 * The clock is passed in so tests need no waiting.
 */
export type TokenBucket = { take: () => number }

export function tokenBucket(opts: { capacity: number; perSecond: number; now?: () => number }): TokenBucket {
  const now = opts.now ?? (() => performance.now())
  let tokens = opts.capacity
  let at = now()
  return {
    take() {
      const t = now()
      tokens = Math.min(opts.capacity, tokens + ((t - at) * opts.perSecond) / 1000)
      at = t
      if (tokens >= 1) {
        tokens -= 1
        return 0
      }
      return Math.ceil(((1 - tokens) * 1000) / opts.perSecond)
    },
  }
}
