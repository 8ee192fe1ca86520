import { and, desc, inArray, lt } from 'drizzle-orm'
import type { Db, Tx } from '../../../../core/db/client'
import { auditLog } from '../../../../core/db/schema'
import type { Logger } from '../../../../core/logger'
import { principalId, type Principal } from '../../auth/principal'
import { Unavailable } from '../../errors'
import type { AuditEntry, AuditQuery } from './model'

/** What admins do, named in the past tense like events. */
export const AUDIT_ACTIONS = [
  'key.created',
  'key.revoked',
  'user.revoked',
  'token.revoked',
  'board.configured',
  'mode.configured',
  'room.visibility_set',
  'message.deleted',
  'rebuild.requested',
  'dead_letter.replayed',
  'dead_letter.replay_failed',
  'dead_letter.discarded',
] as const
export type AuditAction = (typeof AUDIT_ACTIONS)[number]

export type Audit = {
  /**
   * Records an admin action that succeeded: call it after the action, never before (the log says
   * what was done, not what was tried). If the record cannot be written the action still stands:
   * the entry is logged as an error (so it is not lost) and the caller gets 503 `audit_failed`,
   * saying so; every audited action is safe to repeat, and a repeat records it.
   */
  record(actor: Principal, action: AuditAction, target: string, details?: Record<string, unknown>): Promise<void>
  /**
   * Records an action inside the transaction that does it, for an action whose repeat could not
   * record it (a discarded dead letter is gone: its repeat is 404): the action is done only with
   * its entry, and a failure to write the entry fails the transaction (nothing done).
   */
  recordIn(tx: Tx, actor: Principal, action: AuditAction, target: string, details?: Record<string, unknown>): Promise<void>
  /** Newest first; `before` pages by id; `action` (comma-separated) keeps only those actions. */
  list(query: AuditQuery): Promise<AuditEntry[]>
}

/** The audit trail of admin actions, in Postgres (`audit_log`). */
export function createAudit(deps: { db: Db; logger: Logger }): Audit {
  const log = deps.logger.child({ component: 'audit' })
  return {
    async record(actor, action, target, details) {
      const entry = { actor: principalId(actor), action, target, details: details ?? null }
      try {
        await deps.db.insert(auditLog).values(entry)
      } catch (err) {
        log.error({ err, audit: entry }, 'an admin action was done but could not be written to the audit log')
        throw new Unavailable(`${action} on ${target} was done, but could not be recorded in the audit log; repeating the request records it`, 'audit_failed')
      }
    },
    async recordIn(tx, actor, action, target, details) {
      await tx.insert(auditLog).values({ actor: principalId(actor), action, target, details: details ?? null })
    },
    async list({ limit, before, action }) {
      const rows = await deps.db
        .select()
        .from(auditLog)
        .where(and(before !== undefined ? lt(auditLog.id, before) : undefined, action !== undefined ? inArray(auditLog.action, action.split(',')) : undefined))
        .orderBy(desc(auditLog.id))
        .limit(limit)
      return rows.map((r) => ({ ...r, at: r.at.toISOString() }))
    },
  }
}
