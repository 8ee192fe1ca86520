import { ValueErrorType, type ValueError } from '@sinclair/typebox/errors'

/** Most validation problems one answer lists (HTTP 422 details, WebSocket error frames, dead letters). */
export const MAX_PROBLEMS = 10

/**
 * Deepest nesting of arrays and objects accepted in a request body or WebSocket frame. Fanfare's
 * own shapes need 4 levels (`{ events: [{ data: { ... } }] }`). Much deeper values are cheap to
 * send (a 1 MB body nests 500k levels) and break recursive code downstream: Elysia's validation
 * error stringifies the rejected value, and JSON.stringify overflows the stack near 100k levels.
 */
export const MAX_JSON_DEPTH = 64

/**
 * Whether `value` nests arrays and objects more than `limit` levels deep (`[]` is one level).
 * Iterative, and stops at the first path past the limit, so any depth costs no stack.
 */
export function nestedDeeperThan(value: unknown, limit: number): boolean {
  const stack: [unknown, number][] = [[value, 0]]
  while (stack.length > 0) {
    const [v, depth] = stack.pop()!
    if (typeof v !== 'object' || v === null) continue
    if (depth + 1 > limit) return true
    for (const child of Array.isArray(v) ? v : Object.values(v)) {
      if (typeof child === 'object' && child !== null) stack.push([child, depth + 1])
    }
  }
  return false
}

/** One validation problem as clients see it: where (a JSON pointer) and what is wrong. */
export type Problem = { path: string; message: string }

/** The message of a problem that is a property the schema does not declare; its path names it. */
export const UNKNOWN_FIELD = 'unknown field'

/** The message of a problem that is a property the schema requires and the value lacks (see missingMessage). */
export const MISSING_FIELD = 'is required'

/** What a missing field's problem says: that it is required, and what it must be when its schema says so. */
export const missingMessage = (mustBe?: string) => (mustBe === undefined ? MISSING_FIELD : `${MISSING_FIELD} and ${mustBe}`)

/** Whether a problem says its field is missing (see missingMessage). */
export const isMissing = (p: Problem) => p.message === MISSING_FIELD || p.message.startsWith(`${MISSING_FIELD} and `)

/**
 * `problems` without repeats (the same path and message): a field's rule replaces TypeBox's words
 * for every check it fails (an empty id fails its length and its pattern), and is said once. A
 * missing field is said once too: TypeBox then checks the `undefined` it lacks against the field's
 * type (`Expected string`), which tells the client nothing more.
 */
export function distinctProblems<P extends Problem>(problems: P[]): P[] {
  const seen = new Set<string>()
  const missing = new Set<string>()
  return problems.filter((p) => {
    const key = `${p.path}\u0000${p.message}`
    if (seen.has(key) || missing.has(p.path)) return false
    seen.add(key)
    if (isMissing(p)) missing.add(p.path)
    return true
  })
}

/** Schema key marking its `error` as a rule (see rule). */
export const RULE = 'x-rule'

/**
 * Schema options for a field type many fields share (a board, a room, a user id, an event id):
 * `error` says in words what a valid value is, worded to follow the field's name ("must be 1-64
 * characters, ..."), and RULE marks it so. A problem (REST and WebSocket details, dead-letter
 * reasons) carries it after its path; a one-line message puts the field's name first (see
 * schemaSentence). TypeBox's own message quotes the pattern, which tells a person nothing.
 */
export const rule = (text: string) => ({ error: text, [RULE]: true })

type SchemaWords = { error?: unknown; [RULE]?: unknown }

/**
 * What a TypeBox error says to a client. TypeBox words a property the schema does not declare as
 * "Unexpected property"; we say `unknown field`, one phrase everywhere (REST, WebSocket, events),
 * so a client can tell a typo or an unsupported option from a wrong value. A schema's own `error`
 * (the option Elysia's schemas use for their message) says what a valid value is: it replaces
 * TypeBox's words (for a pattern, the regex quoted back). A missing property `is required` (and
 * must be what its `error` says).
 */
export function problemMessage(e: ValueError): string {
  if (e.type === ValueErrorType.ObjectAdditionalProperties) return UNKNOWN_FIELD
  // A value none of a union's literals: name them all, not TypeBox's "Expected union value".
  const literals = literalsOf(e.schema)
  const oneOf = literals && `must be one of ${literals.map((l) => JSON.stringify(l)).join(', ')}`
  const error = (e.schema as SchemaWords | undefined)?.error
  // A rule is worded to follow the field's name; a sentence of the schema's own is said by the message.
  if (e.type === ValueErrorType.ObjectRequiredProperty) return missingMessage(oneOf || (typeof error === 'string' && (e.schema as SchemaWords)[RULE] === true ? error : undefined))
  if (oneOf) return oneOf
  return typeof error === 'string' ? error : e.message
}

/** The values of a union of literals (`t.Union([t.Literal('a'), ...])`), else undefined. */
export function literalsOf(schema: unknown): unknown[] | undefined {
  const anyOf = (schema as { anyOf?: { const?: unknown }[] } | undefined)?.anyOf
  if (!Array.isArray(anyOf) || anyOf.length === 0 || !anyOf.every((s) => s && 'const' in s)) return undefined
  return anyOf.map((s) => s.const)
}

/**
 * A schema's own message for an error as one sentence, or undefined when it has none: its `error`
 * as it is, or a rule after the field's name (the last key of the error's path, else `subject`):
 * `board must be 1-64 characters, ...`.
 */
export function schemaSentence(e: ValueError | undefined, subject = 'value'): string | undefined {
  const words = e?.schema as SchemaWords | undefined
  if (!e || typeof words?.error !== 'string') return undefined
  if (words[RULE] !== true) return words.error
  const field = pointerKey(e.path) || subject
  return e.type === ValueErrorType.ObjectRequiredProperty ? `${field} is required and ${words.error}` : `${field} ${words.error}`
}

/** The last key of a JSON pointer, unescaped (`/a~1b` is the key `a/b`). */
export function pointerKey(pointer: string): string {
  return (pointer.split('/').at(-1) ?? '').replace(/~1/g, '/').replace(/~0/g, '~')
}

/** The path of the first unknown field among `problems`, if there is one. */
export function firstUnknownField(problems: readonly Problem[]): string | undefined {
  return problems.find((p) => p.message === UNKNOWN_FIELD)?.path
}

/**
 * The first `n` values of an iterable, pulling no more than that. For TypeBox's `Errors()`, which
 * yields one error per bad value, lazily: spreading it (`[...errors]`) on a 1 MB body of unknown
 * keys builds 100k error objects before any are dropped, on the API's only thread.
 */
export function takeFirst<T>(values: Iterable<T>, n: number): T[] {
  const out: T[] = []
  if (n <= 0) return out
  for (const v of values) {
    out.push(v)
    if (out.length >= n) break
  }
  return out
}

const DATE_TIME = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:[Zz]|([+-])(\d{2}):(\d{2}))$/

/**
 * The instant an ISO 8601 date-time with a time zone names (`2030-01-02T03:04:05Z`,
 * `2030-01-02T03:04:05.678+02:00`), or undefined when it names none: a day its month lacks
 * (Feb 30), an hour past 23, an offset past 23:59, or an instant outside the years 1-9999 once in
 * UTC (what Postgres' timestamptz and Date#toISOString both hold). Date.parse alone rolls Feb 30
 * over to March 2 and takes year 0, which Postgres then refuses.
 */
export function parseDateTime(text: string): Date | undefined {
  const m = DATE_TIME.exec(text)
  if (!m) return undefined
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number)
  const offsetHours = m[9] === undefined ? 0 : Number(m[9])
  const offsetMinutes = m[10] === undefined ? 0 : Number(m[10])
  const daysInMonth = month >= 1 && month <= 12 ? new Date(Date.UTC(2000, month, 0)).getUTCDate() + (month === 2 && !isLeap(year) ? -1 : 0) : 0
  if (day < 1 || day > daysInMonth || hour > 23 || minute > 59 || second > 59 || offsetHours > 23 || offsetMinutes > 59) return undefined
  const at = new Date(0)
  // setUTCFullYear, not Date.UTC: Date.UTC reads years 0-99 as 1900-1999.
  at.setUTCFullYear(year, month - 1, day)
  at.setUTCHours(hour, minute, second, m[7] === undefined ? 0 : Number(m[7].slice(0, 3).padEnd(3, '0')))
  const utc = new Date(at.getTime() - (m[8] === '-' ? -1 : 1) * (offsetHours * 60 + offsetMinutes) * 60_000)
  const y = utc.getUTCFullYear()
  return y >= 1 && y <= 9999 ? utc : undefined
}

const isLeap = (year: number) => (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0
