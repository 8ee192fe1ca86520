import type { Config } from '../../../core/config'
import { tokenBucket, type TokenBucket } from '../../../core/token-bucket'
import { principalId, type Principal } from '../auth/principal'
import { bucketCharges, type SharedCharges } from './rates'

/** A WebSocket refused or closed by a connection limit; retrying after `retryAfterMs` may succeed. */
export type ConnectionRefusal = {
  /** `rate_limited`: too many connects per second, or held off after abuse; `too_many_connections`: too many open. */
  code: 'rate_limited' | 'too_many_connections'
  message: string
  retryAfterMs: number
}

/** A socket's place in the counts, held from open to close. */
export type Slot = {
  /** The socket authenticated as `p` (an `auth` frame): counts it against that user too; refused while `p` is held off. */
  identify(p: Principal): ConnectionRefusal | undefined
  release(): void
}

export type ConnectionConfig = Pick<
  Config,
  'FANFARE_MAX_CONNECTIONS_PER_IP' | 'FANFARE_MAX_CONNECTIONS_PER_USER' | 'FANFARE_IP_CONNECTS_PER_SECOND' | 'FANFARE_IP_CONNECT_BURST'
>

/**
 * WebSocket connection limits of one node. Open sockets are counted here and, when the node shares
 * its counts (see LimitsCluster), what the other nodes last reported is added: a user or an
 * address is limited across the nodes, checked locally (no round trip). So are an address's
 * connects (the others' are spent from its bucket here) and hold-offs (one set on any node holds
 * here too). An upgrade is checked twice: its address before the credential is verified (so a flood
 * of connects costs no token checks), its user after; a socket is counted when it opens, and one
 * that passes a limit then (upgrades racing past the first check) is refused there.
 */
export type ConnectionLimits = {
  /** At an upgrade: charges one connect to the address, checks its open sockets and any hold-off. */
  admitAddress(ip: string): ConnectionRefusal | undefined
  /** At an upgrade with a credential: checks that user's open sockets and any hold-off. */
  admitPrincipal(p: Principal): ConnectionRefusal | undefined
  /** A socket opened: counts it, or refuses it (nothing counted) if that passes a limit. */
  open(ip: string, p: Principal): { slot: Slot } | { refusal: ConnectionRefusal }
  /**
   * Refuses upgrades of this principal (users and keys; else of this address) for `ms` (after an
   * abuse close), on every node when the node shares its limits (see LimitsCluster).
   */
  holdOff(ip: string, p: Principal, ms: number): void
  /** Forgets connect buckets that are full again and hold-offs that ended. Runs every minute. */
  prune(): void
  /** Open sockets of an address or a principal id on this node (for tests). */
  count(key: string): number
  /** What the node shares with the others (see LimitsCluster). */
  shared: SharedConnections
  stop(): void
}

/**
 * Open-socket counts, hold-offs and connects as nodes share them: keys are `ip:<address>` and
 * principal ids (`u:<sub>`, `k:<id>`), each with this node's count.
 */
export type SharedConnections = {
  /** The keys whose count changed since the last call, with their count now (0: none open). Only while sharing is on. */
  changed(): [string, number][]
  /** Every key with sockets open on this node. */
  state(): [string, number][]
  /** Another node's count of `key` changed by `n`: admissions count it from now. */
  addRemote(key: string, n: number): void
  /** Open sockets of `key` on the other nodes, as last reported (for tests). */
  remote(key: string): number
  /**
   * The hold-offs this node set since the last call, as [key, ms left now] (cleared). The time
   * left, not the end: the nodes' clocks differ, and a client closed for abuse here must not be
   * admitted by the node behind the load balancer it reconnects to. Only while sharing is on.
   */
  heldOff(): [string, number][]
  /**
   * Every hold-off in force here, set here or heard from another node, as [key, ms left]: a node
   * that joins (or repairs a gap) learns them from any node, even from one that was not there when
   * the hold-off was set.
   */
  holds(): [string, number][]
  /**
   * Another node held `key` off for `ms` from now: refused here until then too. A later end wins
   * and none is shortened, so hearing one twice (a delta, then a full state) changes nothing.
   */
  holdOff(key: string, ms: number): void
  /**
   * The connects charged to each address (`ip:<address>`) since the last call, and the others'
   * debited here, as budgets are (SharedCharges): an address's connect rate holds across nodes.
   */
  connects: SharedCharges
}

/** What a client over a concurrency limit is told to wait: sockets close at no predictable time. */
export const BUSY_RETRY_MS = 5000

export function createConnectionLimits(deps: {
  config: ConnectionConfig
  now?: () => number
  /** Every refusal (rate, count or hold-off), so an operator sees clients meeting the limits. */
  onRefused?: (what: 'ws_connections', caller: 'address' | Principal['kind']) => void
  /** Whether the counts are shared with other nodes (then changed keys are kept until read). */
  share?: boolean
  /**
   * Told when this node holds a key off, while sharing: the cluster sends it at once rather than
   * at its next interval, as the client closed for abuse may reconnect to another node within it.
   */
  onHoldOff?: () => void
}): ConnectionLimits {
  const c = deps.config
  /** `r`, counted as refused by the limits of `caller` (an address's, or a principal's). */
  const counted = <T extends ConnectionRefusal | undefined>(caller: 'address' | Principal['kind'], r: T): T => {
    if (r) deps.onRefused?.('ws_connections', caller)
    return r
  }
  const now = deps.now ?? (() => performance.now())
  const connects = new Map<string, TokenBucket>()
  const open = new Map<string, number>()
  /** Sockets open on the other nodes, as they last reported them (see LimitsCluster). */
  const remote = new Map<string, number>()
  /** Keys whose count changed since the cluster last read them. */
  const dirty = new Set<string>()
  const heldUntil = new Map<string, number>()
  /** Keys this node held off since the cluster last read them. */
  const newHolds = new Set<string>()
  /** Connects charged per address key since the cluster last read them. */
  const unsentConnects = new Map<string, number>()
  const connectBucket = (key: string) => {
    let bucket = connects.get(key)
    if (!bucket) connects.set(key, (bucket = tokenBucket({ capacity: c.FANFARE_IP_CONNECT_BURST, perSecond: c.FANFARE_IP_CONNECTS_PER_SECOND, now })))
    return bucket
  }
  /** [key, ms left] of `key`'s hold-off, rounded up (a receiver holds it off no less); none once it ended. */
  const leftOf = (key: string): [string, number] | undefined => {
    const left = Math.ceil((heldUntil.get(key) ?? 0) - now())
    return left > 0 ? [key, left] : undefined
  }
  /** Held off until `until`, or later if a hold-off already ends later (one heard from another node). */
  const holdUntil = (key: string, until: number) => {
    if (until > (heldUntil.get(key) ?? -Infinity)) heldUntil.set(key, until)
  }

  const ipKey = (ip: string) => `ip:${ip}`
  const held = (key: string): ConnectionRefusal | undefined => {
    const until = heldUntil.get(key)
    if (until === undefined) return undefined
    const left = Math.ceil(until - now())
    if (left <= 0) return void heldUntil.delete(key)
    return { code: 'rate_limited', message: `closed for abusing the rate limits: reconnect after ${left} ms`, retryAfterMs: left }
  }
  const tooMany = (key: string, max: number, who: string): ConnectionRefusal | undefined =>
    (open.get(key) ?? 0) + (remote.get(key) ?? 0) >= max
      ? { code: 'too_many_connections', message: `at most ${max} WebSockets per ${who}`, retryAfterMs: BUSY_RETRY_MS }
      : undefined
  // Keys are made once per check (each is a new string, hashed again by every Map lookup).
  const userLimit = (key: string | undefined) => (key === undefined ? undefined : tooMany(key, c.FANFARE_MAX_CONNECTIONS_PER_USER, 'user'))
  const add = (key: string, n: number) => {
    const v = (open.get(key) ?? 0) + n
    if (v <= 0) open.delete(key)
    else open.set(key, v)
    if (deps.share) dirty.add(key)
  }

  const pruning = setInterval(() => limits.prune(), 60_000)
  pruning.unref?.()

  const limits: ConnectionLimits = {
    admitAddress(ip) {
      const key = ipKey(ip)
      // Charged first: every attempt counts, whatever becomes of it.
      const wait = connectBucket(key).take()
      if (wait > 0) {
        return counted('address', { code: 'rate_limited', message: `at most ${c.FANFARE_IP_CONNECTS_PER_SECOND} connects per second per address (burst ${c.FANFARE_IP_CONNECT_BURST})`, retryAfterMs: wait })
      }
      if (deps.share) unsentConnects.set(key, (unsentConnects.get(key) ?? 0) + 1)
      return counted('address', held(key) ?? tooMany(key, c.FANFARE_MAX_CONNECTIONS_PER_IP, 'address'))
    },
    admitPrincipal(p) {
      if (p.kind === 'anonymous') return undefined
      const id = principalId(p)
      return counted(p.kind, held(id) ?? userLimit(p.kind === 'user' ? id : undefined))
    },
    open(ip, p) {
      const ipk = ipKey(ip)
      // The principal's id, made once: it is the user's count key too.
      const own = p.kind === 'anonymous' ? undefined : principalId(p)
      const user = p.kind === 'user' ? own : undefined
      const refusal = counted('address', tooMany(ipk, c.FANFARE_MAX_CONNECTIONS_PER_IP, 'address')) ?? counted('user', userLimit(user))
      if (refusal) return { refusal }
      const keys = [ipk]
      if (user) keys.push(user)
      for (const k of keys) add(k, 1)
      // The principals this socket has been: a fresh token of one of them is no new sign-in.
      const principals = own === undefined ? [] : [own]
      let released = false
      return {
        slot: {
          identify(q) {
            if (released || q.kind === 'anonymous') return undefined
            const id = principalId(q)
            if (principals.includes(id)) return undefined
            // A key held off for abuse is refused here too, as a user is: else its holder reopens
            // an anonymous socket and signs in with an `auth` frame at once, past the hold-off.
            const key = q.kind === 'user' ? id : undefined
            const refused = counted(q.kind, held(id) ?? userLimit(key))
            if (refused) return refused
            principals.push(id)
            if (key !== undefined) {
              keys.push(key)
              add(key, 1)
            }
            return undefined
          },
          release() {
            if (released) return
            released = true
            for (const k of keys) add(k, -1)
          },
        },
      }
    },
    holdOff(ip, p, ms) {
      const key = p.kind === 'anonymous' ? ipKey(ip) : principalId(p)
      holdUntil(key, now() + ms)
      if (!deps.share) return
      newHolds.add(key)
      deps.onHoldOff?.()
    },
    prune() {
      for (const [k, b] of connects) if (b.full()) connects.delete(k)
      for (const [k, until] of heldUntil) if (until <= now()) heldUntil.delete(k)
    },
    count: (key) => open.get(key) ?? 0,
    shared: {
      changed() {
        const out: [string, number][] = []
        for (const key of dirty) out.push([key, open.get(key) ?? 0])
        dirty.clear()
        return out
      },
      state: () => [...open],
      addRemote(key, n) {
        const v = (remote.get(key) ?? 0) + n
        if (v <= 0) remote.delete(key)
        else remote.set(key, v)
      },
      remote: (key) => remote.get(key) ?? 0,
      heldOff() {
        const out: [string, number][] = []
        for (const key of newHolds) {
          const left = leftOf(key)
          if (left) out.push(left)
        }
        newHolds.clear()
        return out
      },
      holds() {
        const out: [string, number][] = []
        for (const key of heldUntil.keys()) {
          const left = leftOf(key)
          if (left) out.push(left)
        }
        return out
      },
      holdOff: (key, ms) => holdUntil(key, now() + ms),
      connects: bucketCharges(unsentConnects, connectBucket),
    },
    stop: () => clearInterval(pruning),
  }
  return limits
}
