import { Type } from '@sinclair/typebox'
import { rule } from '../validation'

/**
 * Field types shared by event contracts. Every string is bounded; names that end up in NATS
 * subjects or channel names (boards, rooms) are restricted to a subject-safe alphabet. Free text
 * must be storable: no NUL character (Postgres text cannot hold one) and no lone UTF-16 surrogate
 * (not valid Unicode; Postgres refuses it in JSON). Such an event could never apply.
 */
/**
 * A name (board, room, stream, poll, match, property): 1-64 letters, digits, _ or -, safe in a NATS
 * subject and a channel. `NAME_CHARS` is the pattern without anchors, for patterns that hold a name
 * (channels); `NAME_IN_WORDS` the rule as their messages say it.
 */
export const NAME_CHARS = '[A-Za-z0-9_-]{1,64}'
export const NAME_IN_WORDS = 'a name of 1-64 letters, digits, _ or -'
export const Name = Type.String({
  pattern: `^${NAME_CHARS}$`,
  description: 'letters, digits, _ or -, 1-64 chars',
  ...rule('must be 1-64 characters, each a letter (A-Z, a-z), a digit, _ or -'),
})
/** 1-`max` characters, no whitespace, NUL or lone surrogate: ids that go into NATS headers and keys. */
const spacelessId = (max: number) => ({
  minLength: 1,
  maxLength: max,
  pattern: '^(?:[^\\s\\u0000\\uD800-\\uDFFF]|[\\uD800-\\uDBFF][\\uDC00-\\uDFFF])+$',
  ...rule(`must be 1-${max} characters with no spaces or other whitespace (nor NUL or an unpaired surrogate)`),
})
export const ActorId = Type.String({ ...spacelessId(128), description: '1-128 chars, no spaces, NUL or lone surrogates' })
export const EventId = Type.String({
  minLength: 1,
  maxLength: 128,
  pattern: '^[A-Za-z0-9_.:@-]+$',
  description: '1-128 chars of A-Z a-z 0-9 _ . : @ -',
  ...rule('must be 1-128 characters, each a letter (A-Z, a-z), a digit, _, ., :, @ or -'),
})
/**
 * Who published an event, as recorded with it (`by`): `u:<user id>`, `k:<key id>`, `ingest`,
 * `admin` (see the API's principalId). No whitespace or NUL (it goes into a NATS header). Event ids
 * are de-duplicated on `<by>/<event id>` (see dedupIdOf): an event id has no '/', so the last '/'
 * always splits the two, whatever `by` holds.
 */
export const PrincipalId = Type.String(spacelessId(140))
/** A display name: 1-64 characters, no control characters. */
export const DisplayName = Type.String({
  minLength: 1,
  maxLength: 64,
  pattern: '^(?:[^\\u0000-\\u001f\\u007f\\uD800-\\uDFFF]|[\\uD800-\\uDBFF][\\uDC00-\\uDFFF])+$',
  description: '1-64 chars, no control characters or lone surrogates',
  ...rule('must be 1-64 characters with no control characters (nor an unpaired surrogate)'),
})
/**
 * Text Postgres can store: any characters but NUL, and surrogates only in pairs. (Zero or more of
 * them: bound the length, and the emptiness, where the pattern is used.)
 */
export const STORABLE_TEXT = '^(?:[^\\u0000\\uD800-\\uDFFF]|[\\uD800-\\uDBFF][\\uDC00-\\uDFFF])*$'

/** 1-`max` characters Postgres can store (see STORABLE_TEXT). */
export const storableText = (max: number) => ({
  minLength: 1,
  maxLength: max,
  pattern: STORABLE_TEXT,
  description: `1-${max} chars, no NUL or lone surrogates`,
  ...rule(`must be 1-${max} characters with no NUL (nor an unpaired surrogate)`),
})
export const ChatText = Type.String(storableText(2000))
export const FiniteNumber = Type.Number({ minimum: -1e15, maximum: 1e15, description: 'finite, |x| <= 1e15' })
