import type { Config } from '../../../core/config'
import { tokenBucket, type TokenBucket } from '../../../core/token-bucket'
import { bucketCharges, type RateRefusal, type SharedCharges } from './rates'

/**
 * Failed credential checks per client address (a guessed key, a bad token, a malformed
 * Authorization header). An address past its budget has no credential checked until it refills:
 * it gets 429 `rate_limited` at once, before any key lookup, so a flood of guesses costs no
 * database queries. Successful checks cost nothing. When the node shares its counts (see
 * LimitsCluster), each address is also charged the failures the other nodes saw from it.
 */
export type AuthFailures = {
  /** Before checking a credential from `ip`: a refusal while its failures are over budget. Charges nothing. */
  admit(ip: string): RateRefusal | undefined
  /**
   * A credential from `ip` failed: one failure is charged, even past the budget (checks admitted
   * together and failing together all count, so a burst of them is paid for by a longer wait).
   */
  failed(ip: string): void
  /** Forgets addresses whose budget is full again. Runs every minute. */
  prune(): void
  /** How many addresses are held (for tests). */
  size(): number
  /** What the node shares with the others, by address (see LimitsCluster). */
  shared: SharedCharges
  stop(): void
}

export function createAuthFailures(deps: {
  config: Pick<Config, 'FANFARE_AUTH_FAILURES_PER_MINUTE'>
  now?: () => number
  /** Told of every refusal (fanfare_rate_limited_total{what="auth"}). */
  onRefused?: (what: 'auth', caller: 'address') => void
  /** Whether the counts are shared with other nodes (then failures are kept until read). */
  share?: boolean
}): AuthFailures {
  const perMinute = deps.config.FANFARE_AUTH_FAILURES_PER_MINUTE
  const now = deps.now ?? (() => performance.now())
  const buckets = new Map<string, TokenBucket>()
  /** Failures per address since the cluster last read them. */
  const unsent = new Map<string, number>()
  const bucketOf = (ip: string) => {
    let bucket = buckets.get(ip)
    if (!bucket) buckets.set(ip, (bucket = tokenBucket({ capacity: perMinute, perSecond: perMinute / 60, now })))
    return bucket
  }
  const message = `at most ${perMinute} failed credential checks per minute per address: wait before trying a credential again`
  const pruning = setInterval(() => limits.prune(), 60_000)
  pruning.unref?.()
  const limits: AuthFailures = {
    admit(ip) {
      const wait = buckets.get(ip)?.wait() ?? 0
      if (wait === 0) return undefined
      deps.onRefused?.('auth', 'address')
      return { code: 'rate_limited', message, retryAfterMs: wait, perSecond: perMinute / 60 }
    },
    failed(ip) {
      bucketOf(ip).spend()
      if (deps.share) unsent.set(ip, (unsent.get(ip) ?? 0) + 1)
    },
    prune() {
      for (const [ip, b] of buckets) if (b.full()) buckets.delete(ip)
    },
    size: () => buckets.size,
    shared: bucketCharges(unsent, bucketOf),
    stop: () => clearInterval(pruning),
  }
  return limits
}
