import type { Config } from '../../../core/config'
import { tokenBucket, type TokenBucket } from '../../../core/token-bucket'
import { principalId, type Principal } from '../auth/principal'
import { abuseMeter, type AbuseMeter } from './abuse'

/** A command refused by a rate limit: nothing was done; the same command may be sent again after `retryAfterMs`. */
export type RateRefusal = {
  code: 'rate_limited'
  message: string
  retryAfterMs: number
  /** The rate of the budget that refused it (weighs the refusal, see AbuseMeter). */
  perSecond: number
}

export type RateConfig = Pick<
  Config,
  | 'FANFARE_WS_PUBLISHES_PER_SECOND'
  | 'FANFARE_WS_PUBLISH_BURST'
  | 'FANFARE_WS_SUBSCRIBES_PER_SECOND'
  | 'FANFARE_USER_OPS_PER_SECOND'
  | 'FANFARE_USER_OPS_BURST'
  | 'FANFARE_KEY_OPS_PER_SECOND'
  | 'FANFARE_KEY_OPS_BURST'
  | 'FANFARE_ANONYMOUS_OPS_PER_SECOND'
  | 'FANFARE_ANONYMOUS_OPS_BURST'
  | 'FANFARE_WS_ABUSE_FACTOR'
  | 'FANFARE_WS_ABUSE_WINDOW_MS'
>

/**
 * The rate limits of one node. Every user and every key has one budget on the node, shared by all
 * its WebSockets and REST calls (a user with 5 sockets gets one budget, not 5); anonymous callers
 * have one per client address, shared the same way (they have no other name). Each WebSocket also
 * has its own publish (users) and subscribe buckets. A command is charged to every budget it falls
 * under or to none (see takeAll): a refusal by one costs nothing elsewhere.
 */
export type RateLimits = {
  /**
   * Charges `cost` to the budget of `p`: a user's, a key's, or for an anonymous caller its
   * `address`'s (none without an address: a request from inside the process).
   */
  charge(p: Principal, cost?: number, address?: string): RateRefusal | undefined
  /** Gives back `n` of what `charge` took from the same budget (a request refused as a whole costs less than it was charged). */
  refund(p: Principal, n: number, address?: string): void
  /**
   * Charges a sign-in on a socket that holds `channels` channels where users are present: it makes
   * the user present in each, as that many subscribes would, so it costs as many from the user's
   * budget (at most the budget's burst, so that a sign-in can always pass once it is full).
   */
  signIn(p: Principal, channels: number): RateRefusal | undefined
  /** How much a budget of `p`'s kind can ever hold: a cost above it can never pass. */
  capacityOf(p: Principal): number
  /** The buckets and abuse meter of a new WebSocket from `address` (its anonymous budget). */
  connection(address?: string): ConnectionRates
  /** Forgets budgets that are full again (they are no different from new ones). Runs every minute. */
  prune(): void
  /** How many budgets are held (for tests and metrics). */
  size(): number
  stop(): void
}

/** One WebSocket's limits. */
export type ConnectionRates = {
  /** Charges one published event to this socket (users only) and to the principal's budget. */
  publish(p: Principal): RateRefusal | undefined
  /** Charges one subscribe to this socket and to the principal's budget. */
  subscribe(p: Principal): RateRefusal | undefined
  /** Records a refusal; true once this socket is abusive (see AbuseMeter). */
  abusive(r: RateRefusal): boolean
}

type Limited = { bucket: TokenBucket; message: string }

export function createRateLimits(deps: {
  config: RateConfig
  maxSubscriptions: number
  now?: () => number
  /** Told of every refusal (fanfare_rate_limited_total). */
  onRefused?: (what: 'rest' | 'ws_publish' | 'ws_subscribe', caller: Principal['kind']) => void
}): RateLimits {
  const counted = (what: 'rest' | 'ws_publish' | 'ws_subscribe', p: Principal, r: RateRefusal | undefined) => {
    if (r) deps.onRefused?.(what, p.kind)
    return r
  }
  const { config: c } = deps
  const now = deps.now ?? (() => performance.now())
  const budgets = new Map<string, Limited>()

  const rateOf = (p: Principal): [perSecond: number, capacity: number, who: string] =>
    p.kind === 'user'
      ? [c.FANFARE_USER_OPS_PER_SECOND, c.FANFARE_USER_OPS_BURST, 'user']
      : p.kind === 'anonymous'
        ? [c.FANFARE_ANONYMOUS_OPS_PER_SECOND, c.FANFARE_ANONYMOUS_OPS_BURST, 'address of anonymous callers']
        : [c.FANFARE_KEY_OPS_PER_SECOND, c.FANFARE_KEY_OPS_BURST, 'API key']

  const budgetOf = (p: Principal, address: string | undefined): Limited | undefined => {
    if (p.kind === 'anonymous' && address === undefined) return undefined
    // An address cannot be a principal id: those are `user:`, `key:` and `root:` names.
    const id = p.kind === 'anonymous' ? `address:${address}` : principalId(p)
    let b = budgets.get(id)
    if (!b) {
      const [perSecond, capacity, who] = rateOf(p)
      b = { bucket: tokenBucket({ capacity, perSecond, now }), message: `at most ${perSecond} commands per second per ${who} on this node (burst ${capacity})` }
      budgets.set(id, b)
    }
    return b
  }

  const pruning = setInterval(() => limits.prune(), 60_000)
  pruning.unref?.()

  const limits: RateLimits = {
    charge: (p, cost = 1, address) => counted('rest', p, chargeAll([budgetOf(p, address)], cost)),
    refund: (p, n, address) => budgetOf(p, address)?.bucket.give(n),
    signIn(p, channels) {
      const budget = budgetOf(p, undefined)
      if (!budget || channels === 0) return undefined
      return counted('ws_subscribe', p, chargeAll([budget], Math.min(channels, budget.bucket.capacity)))
    },
    capacityOf: (p) => rateOf(p)[1],
    connection(address) {
      const publishes: Limited = {
        bucket: tokenBucket({ capacity: c.FANFARE_WS_PUBLISH_BURST, perSecond: c.FANFARE_WS_PUBLISHES_PER_SECOND, now }),
        message: `at most ${c.FANFARE_WS_PUBLISHES_PER_SECOND} events per second per connection (burst ${c.FANFARE_WS_PUBLISH_BURST})`,
      }
      // The burst is as many subscribes as a connection may hold: a reconnecting client
      // resubscribes to everything at once.
      const subscribes: Limited = {
        bucket: tokenBucket({ capacity: deps.maxSubscriptions, perSecond: c.FANFARE_WS_SUBSCRIBES_PER_SECOND, now }),
        message: `at most ${c.FANFARE_WS_SUBSCRIBES_PER_SECOND} subscribes per second per connection (burst ${deps.maxSubscriptions})`,
      }
      const meter: AbuseMeter = abuseMeter({ windowMs: c.FANFARE_WS_ABUSE_WINDOW_MS, factor: c.FANFARE_WS_ABUSE_FACTOR, now })
      return {
        // A key's sockets share the key's budget only: a game server may spread its events over
        // any number of sockets, and what it may send in all is the key's to say.
        publish: (p) => counted('ws_publish', p, chargeAll([p.kind === 'user' ? publishes : undefined, budgetOf(p, address)], 1)),
        subscribe: (p) => counted('ws_subscribe', p, chargeAll([subscribes, budgetOf(p, address)], 1)),
        abusive: (r) => meter.refused(r.perSecond),
      }
    },
    prune() {
      for (const [id, b] of budgets) if (b.bucket.full()) budgets.delete(id)
    },
    size: () => budgets.size,
    stop: () => clearInterval(pruning),
  }
  return limits
}

/** takeAll, reporting which budget refused (the one with the longest wait). */
function chargeAll(limits: (Limited | undefined)[], cost: number): RateRefusal | undefined {
  let worst: { l: Limited; wait: number } | undefined
  for (const l of limits) {
    if (!l) continue
    const wait = l.bucket.wait(cost)
    if (wait > 0 && (!worst || wait > worst.wait)) worst = { l, wait }
  }
  if (worst) return { code: 'rate_limited', message: worst.l.message, retryAfterMs: worst.wait, perSecond: worst.l.bucket.perSecond }
  for (const l of limits) l?.bucket.take(cost)
  return undefined
}
