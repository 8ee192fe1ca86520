import { bigserial, index, jsonb, pgTable, primaryKey, text, timestamp } from 'drizzle-orm/pg-core'

/**
 * API keys of game servers and services. The secret is never stored: `digest` is the SHA-256 of
 * the whole key (keys are high-entropy, so a plain digest is the right lookup form). A deleted key
 * keeps its row with `revokedAt` set, so the audit trail can still name it.
 */
export const apiKeys = pgTable('api_keys', {
  id: text('id').primaryKey(),
  name: text('name').notNull(),
  /** `publish:<event type>`, `publish:*`, `admin:read`, `admin:write`. */
  scopes: jsonb('scopes').$type<string[]>().notNull(),
  digest: text('digest').notNull().unique(),
  createdAt: timestamp('created_at', { withTimezone: true }).notNull().defaultNow(),
  createdBy: text('created_by').notNull(),
  expiresAt: timestamp('expires_at', { withTimezone: true }),
  revokedAt: timestamp('revoked_at', { withTimezone: true }),
  lastUsedAt: timestamp('last_used_at', { withTimezone: true }),
})

/** Users whose tokens issued at or before `revokedBefore` are refused (POST /admin/users/:user/revoke). */
export const userRevocations = pgTable('user_revocations', {
  userId: text('user_id').primaryKey(),
  revokedBefore: timestamp('revoked_before', { withTimezone: true }).notNull(),
  revokedBy: text('revoked_by').notNull(),
})

/**
 * Single tokens refused by their `jti` until they expire anyway (POST /admin/tokens/revoke): the
 * token of `userId` with that jti, or, with `userId` '' (no user named; no `sub` is empty), any
 * token with that jti.
 */
export const tokenRevocations = pgTable(
  'token_revocations',
  {
    jti: text('jti').notNull(),
    userId: text('user_id').notNull().default(''),
    expiresAt: timestamp('expires_at', { withTimezone: true }).notNull(),
    revokedAt: timestamp('revoked_at', { withTimezone: true }).notNull().defaultNow(),
    revokedBy: text('revoked_by').notNull(),
  },
  (t) => [primaryKey({ columns: [t.jti, t.userId] }), index('token_revocations_expires').on(t.expiresAt)],
)

/** Every admin action: who (a principal id), what, on what, when. */
export const auditLog = pgTable(
  'audit_log',
  {
    id: bigserial('id', { mode: 'number' }).primaryKey(),
    at: timestamp('at', { withTimezone: true }).notNull().defaultNow(),
    actor: text('actor').notNull(),
    action: text('action').notNull(),
    target: text('target').notNull(),
    details: jsonb('details'),
  },
  (t) => [index('audit_log_at').on(t.at)],
)
