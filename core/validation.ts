import { ValueErrorType, type ValueError } from '@sinclair/typebox/errors'

/** Most validation problems one answer lists (HTTP 422 details, WebSocket error frames, dead letters). */
export const MAX_PROBLEMS = 10

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
