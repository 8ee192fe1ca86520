import { Invalid } from '../errors'

/**
 * The opaque `next`/`after` cursors of keyset-paged lists: base64url of a JSON array holding the
 * last entry's sort key. Each list checks the fields' types itself (see leaderboards/cursor.ts,
 * streams/service.ts); anything garbled is the same 422 naming `after`.
 */
export const encodePageCursor = (key: readonly unknown[]): string => Buffer.from(JSON.stringify(key)).toString('base64url')

/**
 * The array a cursor holds when it has `length` fields, after `check` accepted them; otherwise
 * 422 invalid_request with `message`, pointing at the `after` query parameter.
 */
export function decodePageCursor<T>(cursor: string, length: number, message: string, check: (fields: unknown[]) => T | undefined): T {
  let fields: unknown
  try {
    fields = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'))
  } catch {
    fields = undefined
  }
  const key = Array.isArray(fields) && fields.length === length ? check(fields) : undefined
  if (key === undefined) throw new Invalid('invalid_request', message, [{ path: '/after', message, in: 'query' }])
  return key
}
