import { Type } from '@sinclair/typebox'

/**
 * Field types shared by event contracts. Every string is bounded; names that end up in NATS
 * subjects or channel names (boards, rooms) are restricted to a subject-safe alphabet. Free text
 * must be storable: no NUL character (Postgres text cannot hold one) and no lone UTF-16 surrogate
 * (not valid Unicode; Postgres refuses it in JSON). Such an event could never apply.
 */
export const Name = Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$', description: 'letters, digits, _ or -, 1-64 chars' })
export const ActorId = Type.String({
  minLength: 1,
  maxLength: 128,
  pattern: '^(?:[^\\s\\u0000\\uD800-\\uDFFF]|[\\uD800-\\uDBFF][\\uDC00-\\uDFFF])+$',
  description: '1-128 chars, no spaces, NUL or lone surrogates',
})
export const EventId = Type.String({ minLength: 1, maxLength: 128, pattern: '^[A-Za-z0-9_.:@-]+$', description: '1-128 chars of A-Z a-z 0-9 _ . : @ -' })
/**
 * Who published an event (see Caller): today 'anonymous', 'ingest' or 'admin'; later a user or an
 * API key id. The event id's alphabet, so never a '/': JetStream de-duplicates on
 * `<principal>/<event id>` (see dedupIdOf), which must not be ambiguous.
 */
export const PrincipalId = Type.String({ minLength: 1, maxLength: 128, pattern: '^[A-Za-z0-9_.:@-]+$' })
export const ChatText = Type.String({
  minLength: 1,
  maxLength: 2000,
  pattern: '^(?:[^\\u0000\\uD800-\\uDFFF]|[\\uD800-\\uDBFF][\\uDC00-\\uDFFF])*$',
  description: '1-2000 chars, no NUL or lone surrogates',
})
export const FiniteNumber = Type.Number({ minimum: -1e15, maximum: 1e15, description: 'finite, |x| <= 1e15' })
