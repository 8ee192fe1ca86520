/** Most validation problems one answer lists (HTTP 422 details, WebSocket error frames, dead letters). */
export const MAX_PROBLEMS = 10

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
