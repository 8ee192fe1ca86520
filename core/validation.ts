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

/**
 * What a TypeBox error says to a client. TypeBox words a property the schema does not declare as
 * "Unexpected property"; we say `unknown field`, one phrase everywhere (REST, WebSocket, events),
 * so a client can tell a typo or an unsupported option from a wrong value.
 */
export function problemMessage(e: ValueError): string {
  return e.type === ValueErrorType.ObjectAdditionalProperties ? UNKNOWN_FIELD : e.message
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
