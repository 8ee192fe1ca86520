import type { NatsConnection } from '@nats-io/transport-node'
import { gt, isNotNull, sql } from 'drizzle-orm'
import type { Db } from '../../../core/db/client'
import { apiKeys, tokenRevocations, userRevocations } from '../../../core/db/schema'
import type { Logger } from '../../../core/logger'
import { createSubscriptionWatch, type SubscriptionWatch } from '../../../core/nats-subscriptions'
import type { Principal } from './principal'

/** One revocation, as broadcast to every API node. */
/**
 * A token revocation names a `user` when only that user's token with the jti is refused (another
 * user's token reusing the jti keeps working); without one, every token with the jti is. A node
 * that predates `user` refuses every token with the jti: stricter, never looser, during an upgrade.
 */
export type Revocation = { kind: 'user'; user: string; before: number } | { kind: 'token'; jti: string; exp: number; user?: string } | { kind: 'key'; id: string }

/** The user a revocation names: a user's, or a token's revoked for one user (a jti alone names nobody). */
export const revokedUser = (r: Revocation): string | undefined => (r.kind === 'user' ? r.user : r.kind === 'token' ? r.user : undefined)

export type Revocations = {
  /** Whether a principal's credential was revoked (keys: the key; users: the user or the token's jti). */
  isRevoked(p: Principal): boolean
  /** Refuses every token of `user` issued up to now. */
  revokeUser(user: string, by: string): Promise<Revocation>
  /**
   * Refuses one token (by `jti`; only `user`'s token with it when `user` is given) until its expiry.
   * Answers with what is kept: its `exp` is the later of `expiresAt` and one kept from before.
   */
  revokeToken(jti: string, expiresAt: Date, by: string, user?: string): Promise<Revocation>
  /** Tells every node that a key was revoked (the caller marked it in Postgres). */
  announceKey(id: string): Promise<void>
  /**
   * Called after any change of what is revoked (a broadcast, a reload): re-check open connections.
   * With the revocation when one was announced or broadcast (a node's own comes twice: as it
   * announces it and as its broadcast comes back); without after a reload.
   */
  onChange(listener: (revocation?: Revocation) => void): void
  stop(): Promise<void>
}

/**
 * What is revoked, kept in Postgres (a restarted node still refuses it) and mirrored in every API
 * node's memory, so checking a principal costs a map lookup. A revocation is written to Postgres,
 * then broadcast on `<prefix>.control.revocations` (core NATS): every node applies it and re-checks
 * its open sockets at once. A node that missed broadcasts (it was cut off from NATS) reloads from
 * Postgres when it reconnects, every second while NATS denies it the subscription (permissions
 * narrowed by a reload: the node is not ready meanwhile, see SubscriptionWatch) and once more when
 * it is let through again, and every `reloadEveryMs` anyway.
 */
export async function startRevocations(deps: {
  db: Db
  nc: NatsConnection
  prefix: string
  logger: Logger
  /** Drops revoked keys from the key lookup cache. */
  forgetKey?: (id: string) => void
  /** The node's watched subscriptions; one of its own when absent. */
  subscriptions?: SubscriptionWatch
  reloadEveryMs?: number
  /** How often it reloads while NATS denies its subscription (default 1 s). */
  deniedReloadEveryMs?: number
  now?: () => number
}): Promise<Revocations> {
  const now = deps.now ?? Date.now
  const subject = `${deps.prefix}.control.revocations`
  const log = deps.logger.child({ component: 'revocations' })
  let users = new Map<string, number>()
  /** Revoked jtis (`\0`-joined after the user's id when revoked for one user; ids hold no NUL) -> when the token expires. */
  let tokens = new Map<string, number>()
  const tokenKey = (jti: string, user?: string) => (user ? `${user}\u0000${jti}` : jti)
  let keys = new Set<string>()
  const listeners: ((revocation?: Revocation) => void)[] = []
  const changed = (r?: Revocation) => listeners.forEach((l) => l(r))

  // Revocations applied while a reload reads Postgres, one list per reload under way: its reads
  // may have been taken before they were written, so it applies them again over what it read
  // (else a broadcast arriving mid-reload is undone by it until the next reload, up to 30 s).
  const duringReloads = new Set<Revocation[]>()
  const apply = (r: Revocation) => {
    for (const during of duringReloads) during.push(r)
    if (r.kind === 'user') users.set(r.user, Math.max(users.get(r.user) ?? 0, r.before))
    else if (r.kind === 'token') tokens.set(tokenKey(r.jti, r.user), Math.max(tokens.get(tokenKey(r.jti, r.user)) ?? 0, r.exp))
    else {
      keys.add(r.id)
      deps.forgetKey?.(r.id)
    }
  }

  const reload = async () => {
    const during: Revocation[] = []
    duringReloads.add(during)
    let read: [{ userId: string; revokedBefore: Date }[], { jti: string; userId: string; expiresAt: Date }[], { id: string }[]]
    try {
      read = await Promise.all([
        deps.db.select().from(userRevocations),
        deps.db.select().from(tokenRevocations).where(gt(tokenRevocations.expiresAt, new Date(now()))),
        deps.db.select({ id: apiKeys.id }).from(apiKeys).where(isNotNull(apiKeys.revokedAt)),
      ])
    } finally {
      duringReloads.delete(during)
    }
    const [u, t, k] = read
    users = new Map(u.map((r) => [r.userId, r.revokedBefore.getTime()]))
    tokens = new Map(t.map((r) => [tokenKey(r.jti, r.userId), r.expiresAt.getTime()]))
    keys = new Set(k.map((r) => r.id))
    for (const r of during) apply(r)
    for (const id of keys) deps.forgetKey?.(id)
    changed()
  }
  await reload()

  const safeReload = () => reload().catch((err) => log.warn({ err }, 'reloading revocations failed; retrying at the next round'))
  let polling: ReturnType<typeof setInterval> | undefined
  const subscriptions = deps.subscriptions ?? createSubscriptionWatch({ nc: deps.nc, logger: deps.logger })
  const sub = subscriptions.subscribe(subject, {
    name: 'revocations',
    onMessage: (msg) => {
      try {
        const r = msg.json<Revocation>()
        apply(r)
        changed(r)
      } catch (e) {
        log.warn({ err: e }, 'unreadable revocation broadcast')
      }
    },
    // Denied, the node misses every broadcast: it is not ready (the orchestrator takes it out), but
    // its open sockets and direct callers remain, so it reads Postgres every second meanwhile, and
    // a revocation still reaches it within about a second instead of at the next 30 s reload.
    onDenied: () => {
      clearInterval(polling)
      polling = setInterval(() => void safeReload(), deps.deniedReloadEveryMs ?? 1_000)
    },
    // Broadcasts sent while it was denied never came: Postgres has them.
    onRestored: () => {
      clearInterval(polling)
      polling = undefined
      void safeReload()
    },
  })
  void (async () => {
    for await (const s of deps.nc.status()) if (s.type === 'reconnect') void safeReload()
  })().catch(() => {})
  const timer = setInterval(() => {
    for (const [jti, exp] of tokens) if (exp <= now()) tokens.delete(jti)
    void safeReload()
  }, deps.reloadEveryMs ?? 30_000)

  const announce = async (r: Revocation) => {
    apply(r)
    changed(r)
    deps.nc.publish(subject, JSON.stringify(r))
    await deps.nc.flush().catch(() => {})
  }

  return {
    isRevoked(p) {
      if (p.kind === 'key') return keys.has(p.id)
      if (p.kind !== 'user') return false
      const before = users.get(p.id)
      // A token without `iat` cannot show it was issued after the revocation.
      if (before !== undefined && (p.issuedAt === undefined || p.issuedAt <= before)) return true
      return p.jti !== undefined && (tokens.has(p.jti) || tokens.has(tokenKey(p.jti, p.id)))
    },
    async revokeUser(user, by) {
      // The cut-off is the later of this node's clock and Postgres' (one clock for every node): a
      // node whose clock is slow would otherwise leave the tokens issued in its lag working.
      const [row] = await deps.db
        .insert(userRevocations)
        .values({ userId: user, revokedBefore: sql`greatest(now(), ${new Date(now()).toISOString()}::timestamptz)`, revokedBy: by })
        .onConflictDoUpdate({ target: userRevocations.userId, set: { revokedBefore: sql`greatest(${userRevocations.revokedBefore}, excluded.revoked_before)`, revokedBy: by } })
        .returning({ before: userRevocations.revokedBefore })
      const r: Revocation = { kind: 'user', user, before: row.before.getTime() }
      await announce(r)
      return r
    },
    async revokeToken(jti, expiresAt, by, user) {
      const [row] = await deps.db
        .insert(tokenRevocations)
        .values({ jti, userId: user ?? '', expiresAt, revokedBy: by })
        .onConflictDoUpdate({
          target: [tokenRevocations.jti, tokenRevocations.userId],
          // Never earlier than what is kept: another token reusing the jti (an earlier exp) must not un-revoke this one.
          set: { expiresAt: sql`greatest(${tokenRevocations.expiresAt}, excluded.expires_at)`, revokedBy: by },
        })
        .returning({ expiresAt: tokenRevocations.expiresAt })
      // What is kept, which is later than `expiresAt` when the jti was revoked before with a later one.
      const r: Revocation = { kind: 'token', jti, exp: row.expiresAt.getTime(), ...(user ? { user } : {}) }
      await announce(r)
      return r
    },
    announceKey: (id) => announce({ kind: 'key', id }),
    onChange: (l) => void listeners.push(l),
    async stop() {
      clearInterval(timer)
      clearInterval(polling)
      sub.unsubscribe()
    },
  }
}
