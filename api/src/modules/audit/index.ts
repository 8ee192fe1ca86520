import { Elysia } from 'elysia'
import type { AuthPlugin } from '../../auth/plugin'
import { ErrorResponse } from '../../error-model'
import { AuditLog, AuditQuery } from './model'
import type { Audit } from './service'

/** `GET /admin/audit`: every admin action, who did it and when (admin:read). */
export function auditModule(deps: { auth: AuthPlugin; audit: Audit }) {
  return new Elysia({ prefix: '/admin', detail: { tags: ['admin'] } }).use(deps.auth).get('/audit', async ({ query }) => ({ entries: await deps.audit.list(query) }), {
    auth: 'admin:read',
    query: AuditQuery,
    response: { 200: AuditLog, 401: ErrorResponse, 403: ErrorResponse, 422: ErrorResponse },
    detail: {
      summary: 'The audit log of admin actions, newest first',
      description:
        'Key creation and revocation, user and token revocations, board rules, room visibility, message deletions and rebuild requests, each with who did it (`actor`, a principal id), when, what and on what. `limit` 1-100 (default 50); `before=<id>` pages to older entries.',
    },
  })
}
