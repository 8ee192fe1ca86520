import { t } from 'elysia'
import { integerParam, MAX_ID } from '../../params'
import { AUDIT_ACTIONS } from './service'

const anAction = `(${AUDIT_ACTIONS.map((a) => a.replace('.', '\\.')).join('|')})`

export const AuditQuery = t.Object({
  limit: integerParam('limit', { minimum: 1, maximum: 100, default: 50 }),
  before: t.Optional(integerParam('before', { minimum: 1, maximum: MAX_ID, description: 'audit entry id: only older ones' })),
  action: t.Optional(
    t.String({
      pattern: `^${anAction}(,${anAction})*$`,
      error: `action must be one or more of ${AUDIT_ACTIONS.join(', ')}, comma-separated`,
      description: 'only these actions (comma-separated), e.g. user.revoked,token.revoked,key.revoked',
    }),
  ),
})
export type AuditQuery = typeof AuditQuery.static

export const AuditEntry = t.Object({
  id: t.Integer({ description: 'rises with every entry: page with ?before=<the last id you got>' }),
  at: t.String({ description: 'when the action was done (ISO 8601)' }),
  actor: t.String({ description: 'who did it: k:<key id>, admin (FANFARE_ADMIN_TOKEN), u:<user id> (a moderator deleting a message)' }),
  action: t.String({ description: 'key.created, key.revoked, user.revoked, token.revoked, board.configured, mode.configured, room.visibility_set, message.deleted, rebuild.requested, dead_letter.replayed, dead_letter.replay_failed, dead_letter.discarded' }),
  target: t.String({ description: 'what it was done to: key:<id>, user:<id>, token:<jti>, board:<name>, mode:<name>, room:<name>, message:<room>/<id>, projection:<name>, dead_letter:<id>' }),
  details: t.Unknown({ description: 'what was set or done (never a secret)' }),
})
export type AuditEntry = typeof AuditEntry.static
export const AuditLog = t.Object({ entries: t.Array(AuditEntry, { description: 'newest first' }) })
