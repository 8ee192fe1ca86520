import { t } from 'elysia'
import { DisplayName, Name } from '../../../../core/events'
import { publishers } from '../../auth/permissions'
import type { Scope } from '../../auth/principal'

/**
 * The scopes a key may be given: `publish:*`, `publish:<type>` for each event type the publish
 * table lets keys publish with that scope, `admin:read` and `admin:write`. Derived from the table so
 * that every scope grants something: deletions, for instance, need `admin:write`, so a
 * `publish:chat.message.deleted` key would publish nothing, and is refused at creation instead.
 */
export const grantableScopes: Scope[] = [
  'publish:*',
  ...new Set(Object.values(publishers).flatMap((rule) => rule.keys.filter((s) => s.startsWith('publish:')))),
  'admin:read',
  'admin:write',
]

export const KeyScope = t.String({ minLength: 1, maxLength: 80, description: grantableScopes.join(', ') })

export const CreateKeyBody = t.Object(
  {
    name: DisplayName,
    scopes: t.Array(KeyScope, { minItems: 1, maxItems: 16, description: `one or more of: ${grantableScopes.join(', ')}` }),
    expiresAt: t.Optional(t.String({ format: 'date-time', description: 'ISO 8601, in the future; absent: the key never expires' })),
  },
  { additionalProperties: false },
)
export type CreateKeyBody = typeof CreateKeyBody.static

const KeyFields = {
  id: t.String({ description: 'key_<16 hex>: names the key in the audit log and in events it published (by: k:<id>)' }),
  name: t.String(),
  scopes: t.Array(t.String()),
  createdAt: t.String(),
  expiresAt: t.Union([t.String(), t.Null()]),
}

export const CreatedKey = t.Object({
  ...KeyFields,
  key: t.String({ description: 'the secret (ffk_...): shown this once, stored only as its SHA-256 digest' }),
})

export const KeyInfo = t.Object({
  ...KeyFields,
  createdBy: t.String({ description: 'principal id of the admin who created it' }),
  revokedAt: t.Union([t.String(), t.Null()]),
  lastUsedAt: t.Union([t.String(), t.Null()], { description: 'last use, written at most once a minute per node' }),
})
export const KeyList = t.Object({ keys: t.Array(KeyInfo, { description: 'newest first, revoked ones included' }) })
export const KeyParams = t.Object({ id: t.String({ ...Name, description: 'key_<16 hex>' }) })
