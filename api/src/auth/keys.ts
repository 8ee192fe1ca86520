import { createHash, randomBytes } from 'node:crypto'
import { and, desc, eq, inArray, isNull, sql } from 'drizzle-orm'
import type { Db } from '../../../core/db/client'
import { apiKeys } from '../../../core/db/schema'
import { KeyExpired, Revoked } from '../errors'
import type { KeyPrincipal, Scope } from './principal'

/** Every key starts with this, so a key is told from a JWT at a glance (and by secret scanners). */
export const KEY_PREFIX = 'ffk_'

/** An API key as admins see it: never the secret. */
export type KeyInfo = {
  id: string
  name: string
  scopes: Scope[]
  createdAt: string
  createdBy: string
  expiresAt: string | null
  revokedAt: string | null
  lastUsedAt: string | null
}

export type KeyStore = {
  /** Creates a key; the only time its secret (`key`) exists outside the caller's hands. */
  create(input: { name: string; scopes: Scope[]; expiresAt?: Date; createdBy: string }): Promise<KeyInfo & { key: string }>
  list(): Promise<KeyInfo[]>
  /** Marks a key revoked; false if there is no such live key. */
  revoke(id: string): Promise<boolean>
  /**
   * The live key a secret belongs to, or undefined (unknown). Cached briefly. A revoked key throws
   * Revoked (401 `revoked`), an expired one KeyExpired (401 `key_expired`), so its holder learns it
   * will never work again.
   */
  lookup(secret: string): Promise<KeyPrincipal | undefined>
  /** Drops a key from the lookup cache (it was revoked, here or on another node). */
  forget(id: string): void
  /** Writes pending `lastUsedAt` updates (also done every minute). */
  flushUsage(): Promise<void>
  stop(): Promise<void>
}

const digestOf = (secret: string) => createHash('sha256').update(secret).digest('hex')

/** How long a looked-up key is trusted without asking Postgres again (revocation evicts at once). */
const CACHE_MS = 30_000

/** Most keys, and apart most unknown secrets, the lookup cache holds (each is cleared when full). */
const MAX_CACHED = 10_000

export function createKeyStore(deps: { db: Db; now?: () => number }): KeyStore {
  const now = deps.now ?? Date.now
  const cache = new Map<string, { key: KeyPrincipal; revoked: boolean; at: number }>()
  // Unknown secrets apart: guesses (each a new secret) fill and clear this one, never the keys'.
  // Safe with creation: a new key's secret is random, so no lookup can have missed it before.
  const misses = new Map<string, number>()
  const used = new Set<string>()
  const info = (r: typeof apiKeys.$inferSelect): KeyInfo => ({
    id: r.id,
    name: r.name,
    scopes: r.scopes as Scope[],
    createdAt: r.createdAt.toISOString(),
    createdBy: r.createdBy,
    expiresAt: r.expiresAt?.toISOString() ?? null,
    revokedAt: r.revokedAt?.toISOString() ?? null,
    lastUsedAt: r.lastUsedAt?.toISOString() ?? null,
  })
  const flushUsage = async () => {
    if (used.size === 0) return
    const ids = [...used]
    used.clear()
    await deps.db.update(apiKeys).set({ lastUsedAt: new Date(now()) }).where(inArray(apiKeys.id, ids))
  }
  const timer = setInterval(() => void flushUsage().catch(() => {}), 60_000)
  timer.unref?.()

  return {
    async create({ name, scopes, expiresAt, createdBy }) {
      const id = `key_${randomBytes(8).toString('hex')}`
      const key = `${KEY_PREFIX}${randomBytes(24).toString('base64url')}`
      const [row] = await deps.db
        .insert(apiKeys)
        .values({ id, name, scopes: [...new Set(scopes)], digest: digestOf(key), createdBy, expiresAt: expiresAt ?? null })
        .returning()
      return { ...info(row), key }
    },
    async list() {
      const rows = await deps.db.select().from(apiKeys).orderBy(desc(apiKeys.createdAt), apiKeys.id)
      return rows.map(info)
    },
    async revoke(id) {
      const rows = await deps.db
        .update(apiKeys)
        .set({ revokedAt: sql`now()` })
        .where(and(eq(apiKeys.id, id), isNull(apiKeys.revokedAt)))
        .returning({ id: apiKeys.id })
      this.forget(id)
      return rows.length > 0
    },
    async lookup(secret) {
      if (!secret.startsWith(KEY_PREFIX) || secret.length > 128) return undefined
      const digest = digestOf(secret)
      const missed = misses.get(digest)
      if (missed !== undefined && now() - missed < CACHE_MS) return undefined
      const hit = cache.get(digest)
      let entry = hit && now() - hit.at < CACHE_MS ? hit : undefined
      if (!entry) {
        const [row] = await deps.db.select().from(apiKeys).where(eq(apiKeys.digest, digest))
        if (!row) {
          if (misses.size >= MAX_CACHED) misses.clear()
          misses.set(digest, now())
          return undefined
        }
        const key: KeyPrincipal = { kind: 'key', id: row.id, name: row.name, scopes: row.scopes as Scope[], ...(row.expiresAt ? { expiresAt: row.expiresAt.getTime() } : {}) }
        if (cache.size >= MAX_CACHED) cache.clear()
        entry = { key, revoked: Boolean(row.revokedAt), at: now() }
        cache.set(digest, entry)
      }
      if (entry.revoked) throw new Revoked('this API key was revoked')
      const key = entry.key
      if (key.expiresAt !== undefined && key.expiresAt <= now()) throw new KeyExpired(`this API key expired at ${new Date(key.expiresAt).toISOString()}`)
      used.add(key.id)
      return key
    },
    forget(id) {
      for (const [digest, entry] of cache) if (entry.key.id === id) cache.delete(digest)
    },
    flushUsage,
    async stop() {
      clearInterval(timer)
      await flushUsage().catch(() => {})
    },
  }
}
