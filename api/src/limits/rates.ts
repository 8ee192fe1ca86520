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

/**
 * The first rung of the ladder (warning, then refusal, then 4029): a budget a socket's commands are
 * charged to is nearly spent. Sent once, then not again on that socket until the budget has come
 * back to half (see ConnectionRates.warning); nothing was refused.
 */
export type RateWarning = {
  code: 'rate_limit_near'
  message: string
  /** Commands left in the budget now (0 when it is in debt: other nodes spent it). */
  remaining: number
  burst: number
  perSecond: number
}

/** A budget below this share of its burst is nearly spent: a socket charged to it is warned. */
export const WARN_BELOW = 0.2
/** Warned, a socket is warned again only after the budget came back to this share. */
export const WARN_AGAIN_FROM = 0.5

/**
 * Where a caller's budget stands, for REST's RateLimit-Policy and RateLimit fields
 * (draft-ietf-httpapi-ratelimit-headers): `name` the policy, `burst` the quota, `windowS` the
 * seconds an empty budget takes to fill, `remaining` what is left, `fullInS` the seconds until full.
 */
export type Standing = { name: 'user' | 'key' | 'address'; burst: number; windowS: number; remaining: number; fullInS: number }

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
 * The rate limits of one node. Every user and every key has one budget, shared by all its
 * WebSockets and REST calls (a user with 5 sockets gets one budget, not 5); anonymous callers
 * have one per client address, shared the same way (they have no other name). When the node shares
 * its charges (see LimitsCluster), each budget is also debited with what the other nodes charged
 * it, so it holds across the nodes. Each WebSocket also
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
  /** Where `p`'s budget stands now (undefined: none, a request from inside the process). */
  standing(p: Principal, address?: string): Standing | undefined
  /**
   * `charge`, then `standing` of the budget it charged, with one lookup of that budget (a REST
   * request's hot path): the refusal, or where the budget stands after the charge.
   */
  chargeStanding(p: Principal, cost: number, address?: string): { refused: RateRefusal } | { refused?: undefined; standing: Standing | undefined }
  /** The buckets and abuse meter of a new WebSocket from `address` (its anonymous budget). */
  connection(address?: string): ConnectionRates
  /** Forgets budgets that are full again (they are no different from new ones). Runs every minute. */
  prune(): void
  /** How many budgets are held (for tests and metrics). */
  size(): number
  /** What the node shares with the others (see LimitsCluster). */
  shared: SharedCharges
  stop(): void
}

/**
 * Charges as nodes share them, per budget id (a principal id, or `address:<ip>` for anonymous
 * callers). Also the failed credentials per address (AuthFailures), by address.
 */
export type SharedCharges = {
  /** What this node charged per budget since the last call (net of refunds; cleared). Only while sharing is on. */
  drain(): [string, number][]
  /** Another node charged `n` to budget `id` (negative: it gave back): this node's budget pays it too. */
  debit(id: string, n: number): void
}

/**
 * The SharedCharges of buckets keyed by address (failed credentials, connects): `unsent` holds what
 * this node charged since the last drain; another node's charges are spent from the bucket here,
 * past its burst if need be (the debt is what that node let through).
 */
export function bucketCharges(unsent: Map<string, number>, bucketOf: (key: string) => TokenBucket): SharedCharges {
  return {
    drain() {
      const out = [...unsent]
      unsent.clear()
      return out
    },
    debit(key, n) {
      if (n > 0) bucketOf(key).spend(n)
    },
  }
}

/** One WebSocket's limits. */
export type ConnectionRates = {
  /** Charges one published event to this socket (users only) and to the principal's budget. */
  publish(p: Principal): RateRefusal | undefined
  /** Charges one subscribe to this socket and to the principal's budget. */
  subscribe(p: Principal): RateRefusal | undefined
  /** Records a refusal; true once this socket is abusive (see AbuseMeter). */
  abusive(r: RateRefusal): boolean
  /**
   * After a command of `p` passed: a warning when a budget it was charged to (the principal's, a
   * user socket's publishes) is below WARN_BELOW of its burst, once, until that budget is back at
   * WARN_AGAIN_FROM (asked after a command that passed above it). Undefined otherwise.
   * Asked right after `publish` or `subscribe` passed for the same `p`, it reads the budget that
   * command was charged to, without looking it up again.
   */
  warning(p: Principal): RateWarning | undefined
}

/**
 * A bucket and what its refusal says. A budget that nodes share has its `id`, and what this node
 * charged it since the cluster last read it (`unsent`, `queued` while it is in the list to send):
 * a counter per budget per interval, no allocation per charge.
 */
type Limited = { bucket: TokenBucket; message: string; id?: string; unsent: number; queued: boolean }

export function createRateLimits(deps: {
  config: RateConfig
  maxSubscriptions: number
  now?: () => number
  /** Told of every refusal (fanfare_rate_limited_total). */
  onRefused?: (what: 'rest' | 'ws_publish' | 'ws_subscribe', caller: Principal['kind']) => void
  /** Whether the budgets are shared with other nodes (then what is charged is kept until read). */
  share?: boolean
}): RateLimits {
  const counted = (what: 'rest' | 'ws_publish' | 'ws_subscribe', p: Principal, r: RateRefusal | undefined) => {
    if (r) deps.onRefused?.(what, p.kind)
    return r
  }
  const { config: c } = deps
  const now = deps.now ?? (() => performance.now())
  const budgets = new Map<string, Limited>()
  /** Shared budgets charged since the cluster last read them. */
  let queue: Limited[] = []
  const note = deps.share
    ? (l: Limited, n: number) => {
        l.unsent += n
        if (!l.queued) {
          l.queued = true
          queue.push(l)
        }
      }
    : undefined

  const rateOf = (kind: Principal['kind']): [perSecond: number, capacity: number, who: string] =>
    kind === 'user'
      ? [c.FANFARE_USER_OPS_PER_SECOND, c.FANFARE_USER_OPS_BURST, 'user']
      : kind === 'anonymous'
        ? [c.FANFARE_ANONYMOUS_OPS_PER_SECOND, c.FANFARE_ANONYMOUS_OPS_BURST, 'address of anonymous callers']
        : [c.FANFARE_KEY_OPS_PER_SECOND, c.FANFARE_KEY_OPS_BURST, 'API key']

  const budgetById = (id: string, kind: Principal['kind']): Limited => {
    let b = budgets.get(id)
    if (!b) {
      const [perSecond, capacity, who] = rateOf(kind)
      b = { bucket: tokenBucket({ capacity, perSecond, now }), message: `at most ${perSecond} commands per second per ${who} (burst ${capacity})`, id, unsent: 0, queued: false }
      budgets.set(id, b)
    }
    return b
  }
  const budgetOf = (p: Principal, address: string | undefined): Limited | undefined => {
    if (p.kind === 'anonymous' && address === undefined) return undefined
    // An address cannot be a principal id: those are `u:`, `k:` and root names (principalId).
    return budgetById(p.kind === 'anonymous' ? `address:${address}` : principalId(p), p.kind)
  }
  /** The kind of principal a shared budget id names (its rate): `u:` users, `address:` anonymous callers, else keys. */
  const kindOfId = (id: string): Principal['kind'] => (id.startsWith('u:') ? 'user' : id.startsWith('address:') ? 'anonymous' : 'key')
  const charge = (limits: (Limited | undefined)[], cost: number) => chargeAll(limits, cost, note)
  const standingOf = (kind: Principal['kind'], b: Limited): Standing => {
    const { capacity, perSecond } = b.bucket
    const tokens = b.bucket.available()
    return {
      name: kind === 'anonymous' ? 'address' : kind === 'user' ? 'user' : 'key',
      burst: capacity,
      windowS: Math.ceil(capacity / perSecond),
      remaining: Math.max(0, Math.floor(tokens)),
      fullInS: Math.ceil((capacity - tokens) / perSecond),
    }
  }

  const pruning = setInterval(() => limits.prune(), 60_000)
  pruning.unref?.()

  const limits: RateLimits = {
    charge: (p, cost = 1, address) => counted('rest', p, charge([budgetOf(p, address)], cost)),
    refund(p, n, address) {
      const b = budgetOf(p, address)
      if (!b) return
      b.bucket.give(n)
      note?.(b, -n)
    },
    signIn(p, channels) {
      const budget = budgetOf(p, undefined)
      if (!budget || channels === 0) return undefined
      return counted('ws_subscribe', p, charge([budget], Math.min(channels, budget.bucket.capacity)))
    },
    capacityOf: (p) => rateOf(p.kind)[1],
    standing(p, address) {
      const b = budgetOf(p, address)
      return b && standingOf(p.kind, b)
    },
    chargeStanding(p, cost, address) {
      const b = budgetOf(p, address)
      const refused = counted('rest', p, charge([b], cost))
      return refused ? { refused } : { standing: b && standingOf(p.kind, b) }
    },
    connection(address) {
      const publishes: Limited = {
        bucket: tokenBucket({ capacity: c.FANFARE_WS_PUBLISH_BURST, perSecond: c.FANFARE_WS_PUBLISHES_PER_SECOND, now }),
        message: `at most ${c.FANFARE_WS_PUBLISHES_PER_SECOND} events per second per connection (burst ${c.FANFARE_WS_PUBLISH_BURST})`,
        unsent: 0,
        queued: false,
      }
      // The burst is as many subscribes as a connection may hold: a reconnecting client
      // resubscribes to everything at once.
      const subscribes: Limited = {
        bucket: tokenBucket({ capacity: deps.maxSubscriptions, perSecond: c.FANFARE_WS_SUBSCRIBES_PER_SECOND, now }),
        message: `at most ${c.FANFARE_WS_SUBSCRIBES_PER_SECOND} subscribes per second per connection (burst ${deps.maxSubscriptions})`,
        unsent: 0,
        queued: false,
      }
      const meter: AbuseMeter = abuseMeter({ windowMs: c.FANFARE_WS_ABUSE_WINDOW_MS, factor: c.FANFARE_WS_ABUSE_FACTOR, now })
      let warned = false
      // The principal's budget the last command that passed was charged to, and for whom: the
      // warning asked right after it reads it instead of looking it up again (the hot path of a
      // publish). Read once: a warning asked later looks the budget up.
      let chargedFor: Principal | undefined
      let charged: Limited | undefined
      const chargeTo = (what: 'ws_publish' | 'ws_subscribe', p: Principal, own: Limited | undefined) => {
        const budget = budgetOf(p, address)
        const refused = counted(what, p, charge([own, budget], 1))
        chargedFor = refused ? undefined : p
        charged = refused ? undefined : budget
        return refused
      }
      return {
        // A key's sockets share the key's budget only: a game server may spread its events over
        // any number of sockets, and what it may send in all is the key's to say.
        publish: (p) => chargeTo('ws_publish', p, p.kind === 'user' ? publishes : undefined),
        subscribe: (p) => chargeTo('ws_subscribe', p, subscribes),
        abusive: (r) => meter.refused(r.perSecond),
        warning(p) {
          const budget = chargedFor === p ? charged : budgetOf(p, address)
          chargedFor = charged = undefined
          // The budget nearest to refusing (the subscribes' bucket is a reconnect's burst, not a
          // rate a client keeps up: never a warning).
          const own = p.kind === 'user' ? publishes : undefined
          const ownShare = own ? own.bucket.available() / own.bucket.capacity : Infinity
          const budgetShare = budget ? budget.bucket.available() / budget.bucket.capacity : Infinity
          const [tight, share] = budgetShare < ownShare ? [budget!, budgetShare] : [own, ownShare]
          if (!tight) return undefined
          if (warned) {
            if (share >= WARN_AGAIN_FROM) warned = false
            return undefined
          }
          if (share >= WARN_BELOW) return undefined
          warned = true
          const { capacity, perSecond } = tight.bucket
          const remaining = Math.max(0, Math.floor(share * capacity))
          return { code: 'rate_limit_near', message: `${remaining} left: ${tight.message}; past it, commands are refused (rate_limited)`, remaining, burst: capacity, perSecond }
        },
      }
    },
    prune() {
      for (const [id, b] of budgets) if (b.bucket.full()) budgets.delete(id)
    },
    size: () => budgets.size,
    shared: {
      drain() {
        const out: [string, number][] = []
        for (const l of queue) {
          if (l.unsent !== 0) out.push([l.id!, l.unsent])
          l.unsent = 0
          l.queued = false
        }
        queue = []
        return out
      },
      debit(id, n) {
        const b = budgetById(id, kindOfId(id))
        // Spent even past the budget: the debt is this node's share of what the other one let through.
        if (n > 0) b.bucket.spend(n)
        else b.bucket.give(-n)
      },
    },
    stop: () => clearInterval(pruning),
  }
  return limits
}

/**
 * takeAll, reporting which budget refused (the one with the longest wait); what a shared budget was
 * charged is told to `note`.
 */
function chargeAll(limits: (Limited | undefined)[], cost: number, note?: (l: Limited, n: number) => void): RateRefusal | undefined {
  let worst: { l: Limited; wait: number } | undefined
  for (const l of limits) {
    if (!l) continue
    const wait = l.bucket.wait(cost)
    if (wait > 0 && (!worst || wait > worst.wait)) worst = { l, wait }
  }
  if (worst) return { code: 'rate_limited', message: worst.l.message, retryAfterMs: worst.wait, perSecond: worst.l.bucket.perSecond }
  for (const l of limits) {
    if (!l) continue
    l.bucket.take(cost)
    if (note && l.id !== undefined) note(l, cost)
  }
  return undefined
}
