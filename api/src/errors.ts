import { Elysia, ValidationError } from 'elysia'
import type { ValueError } from '@sinclair/typebox/errors'
import { dbErrorSummary, isTransientDbError, sqlStateOf } from '../../core/db/errors'
import type { Logger } from '../../core/logger'
import { firstUnknownField, isMissing, literalsOf, MAX_PROBLEMS, pointerKey, problemMessage, RULE, schemaSentence, takeFirst, type Problem } from '../../core/validation'
import { PARAM_NAME } from './params'

/** The one error body every 4xx/5xx of the API carries. */
export type ErrorBody = { error: { code: string; message: string; details?: unknown } }

/**
 * An expected failure: a string `code` clients can branch on, the HTTP `status`, and optional
 * `details`. Services throw these; the error plugin turns them into an ErrorBody.
 */
export abstract class AppError extends Error {
  abstract readonly status: number
  constructor(
    readonly code: string,
    message: string,
    readonly details?: unknown,
  ) {
    super(message)
    this.name = new.target.name
  }
}

/** Bad input: 422 by default (well-formed but unacceptable), 400 for malformed requests. */
export class Invalid extends AppError {
  readonly status: 400 | 422
  constructor(code: string, message: string, details?: unknown, status: 400 | 422 = 422) {
    super(code, message, details)
    this.status = status
  }
}
/** No credential, or one that is not valid (`invalid_token`): 401. */
export class Unauthorized extends AppError {
  readonly status = 401
  constructor(message = 'missing or unknown bearer token', code = 'unauthorized') {
    super(code, message)
  }
}
/** A user token past its `exp`: 401 `token_expired` (get a fresh token; on a WebSocket, close 4001). */
export class TokenExpired extends Unauthorized {
  constructor(message = 'the token has expired') {
    super(message, 'token_expired')
  }
}
/**
 * An API key past its `expiresAt`: 401 `key_expired` (on a WebSocket, close 4003: the key will not
 * work again; an admin creates another). Like an expired token, no guess: only a real key expires.
 */
export class KeyExpired extends Unauthorized {
  constructor(message = 'this API key has expired') {
    super(message, 'key_expired')
  }
}
/** A credential an admin revoked (a key, a user, a token): 401 `revoked` (on a WebSocket, close 4003). */
export class Revoked extends Unauthorized {
  constructor(message = 'this credential was revoked') {
    super(message, 'revoked')
  }
}
/** Whole seconds for a `Retry-After` header: at least 1, rounded up (never earlier than `retryAfterMs`). */
export const retryAfterSeconds = (retryAfterMs: number) => String(Math.max(1, Math.ceil(retryAfterMs / 1000)))

/** Over a rate limit: 429 `rate_limited` with `retryAfterMs`; nothing was done. */
export class RateLimited extends AppError {
  readonly status = 429
  constructor(
    readonly retryAfterMs: number,
    message = 'too many requests',
  ) {
    super('rate_limited', message, { retryAfterMs })
  }
}
export class Forbidden extends AppError {
  readonly status = 403
  constructor(message = 'this token may not do that', details?: unknown) {
    super('forbidden', message, details)
  }
}
export class NotFound extends AppError {
  readonly status = 404
}
export class Conflict extends AppError {
  readonly status = 409
}
export class PayloadTooLarge extends AppError {
  readonly status = 413
  constructor(limit: number) {
    super('payload_too_large', `request body exceeds ${limit} bytes`, { limit })
  }
}
/** A dependency (NATS, JetStream, Postgres) cannot serve the request now; retrying later may work. */
export class Unavailable extends AppError {
  readonly status = 503
  /** Sent as `Retry-After`: a 503 here is always "shortly" (NATS back, a node's queue drained). */
  readonly retryAfterMs = 1000
  constructor(message = 'service temporarily unavailable', code = 'unavailable', details?: unknown) {
    super(code, message, details)
  }
}

/** Builds an ErrorBody response. */
export function errorResponse(status: number, code: string, message: string, details?: unknown): Response {
  const body: ErrorBody = { error: details === undefined ? { code, message } : { code, message, details } }
  return Response.json(body, { status })
}

/** One validation problem as reported to clients. */
export type ValidationProblem = Problem

/**
 * Flattens the first `limit` TypeBox errors for clients, pulling no more than needed from the
 * iterators (see takeFirst). A union error alone says only "Expected union value", so we descend
 * into the variant that came closest (fewest errors, counted up to `limit`; the first on a tie) to
 * say what is actually wrong.
 */
export function validationProblems(errors: Iterable<ValueError>, limit = MAX_PROBLEMS): ValidationProblem[] {
  return problemsWithErrors(errors, limit).map(({ problem }) => problem)
}

/** validationProblems, each with the TypeBox error it reports (a union's: the closest variant's). */
function problemsWithErrors(errors: Iterable<ValueError>, limit: number): { problem: ValidationProblem; error: ValueError }[] {
  const out: { problem: ValidationProblem; error: ValueError }[] = []
  if (limit <= 0) return out
  for (const e of errors) {
    // A missing field is said once (see distinctProblems): not again for the `undefined` it lacks.
    if (out.some((o) => o.problem.path === (e.path || '/') && isMissing(o.problem))) continue
    // A value none of a union's literals: problemMessage names them all (not the closest variant's "Expected 'none'").
    if (literalsOf(e.schema)) {
      out.push({ problem: { path: e.path || '/', message: problemMessage(e) }, error: e })
      if (out.length >= limit) break
      continue
    }
    const variants = (e as ValueError & { errors?: Iterable<ValueError>[] }).errors
    if (variants && variants.length > 0) {
      const best = variants.map((it) => takeFirst(it, limit - out.length)).sort((a, b) => a.length - b.length)[0]
      if (best.length > 0) {
        out.push(...problemsWithErrors(best, limit - out.length))
        if (out.length >= limit) break
        continue
      }
    }
    const problem = { path: e.path || '/', message: problemMessage(e) }
    // Said once (see distinctProblems): a rule replaces the words of every check its value fails.
    if (out.some((o) => o.problem.path === problem.path && o.problem.message === problem.message)) continue
    out.push({ problem, error: e })
    if (out.length >= limit) break
  }
  return out
}

/**
 * The error plugin: maps AppErrors and Elysia's own errors to ErrorBody responses. Registered
 * globally so every route of the app, whichever plugin declares it, answers errors the same way.
 * Unexpected errors are logged here, once, and reported as 500 `internal` without internals.
 */
export function errorHandler(logger: Logger) {
  return new Elysia({ name: 'errors' }).onError({ as: 'global' }, ({ code, error, request, path }) => {
    // Elysia wraps whatever a parse hook throws (our 413 and 400 included) in a ParseError.
    const cause = (error as { cause?: unknown }).cause
    if (code === 'PARSE' && cause instanceof AppError) return errorResponse(cause.status, cause.code, cause.message, cause.details)
    if (error instanceof RateLimited || error instanceof Unavailable) return retryLater(error)
    if (error instanceof AppError) return errorResponse(error.status, error.code, error.message, error.details)
    switch (code) {
      case 'VALIDATION': {
        const v = error as ValidationError
        // A response that does not match its own schema is our bug, not the client's.
        if (v.type === 'response') {
          logger.error({ err: error, method: request.method, path, problems: validationProblems(safeAll(v)) }, 'response does not match its schema')
          return errorResponse(500, 'internal', 'internal error')
        }
        const { where, problems, first } = describeValidation(v, request)
        return errorResponse(422, 'invalid_request', validationMessage(v, where, problems, first), problems)
      }
      case 'PARSE':
        return errorResponse(400, 'bad_json', 'request body is not valid JSON')
      case 'NOT_FOUND':
        return errorResponse(404, 'not_found', `no route ${request.method} ${path}`)
      case 'INVALID_COOKIE_SIGNATURE':
      case 'INVALID_FILE_TYPE':
        return errorResponse(400, 'bad_request', (error as Error).message)
      default: {
        // Bun rejects a body over maxRequestBodySize with this error before we can parse it.
        if (isBodyTooLarge(error)) return errorResponse(413, 'payload_too_large', 'request body is too large')
        // Postgres down, restarting, out of connections or read-only for a while: the client can
        // retry, which a 500 `internal` does not tell it.
        const unavailable = databaseUnavailable(error)
        if (unavailable) {
          logger.warn({ err: dbErrorSummary(error), method: request.method, path }, 'database unavailable')
          return retryLater(unavailable)
        }
        logger.error({ err: error, method: request.method, path, code }, 'unhandled error')
        return errorResponse(500, 'internal', 'internal error')
      }
    }
  })
}

/**
 * The one-line message of a 422. An unknown field is named first: it is the likeliest cause (a
 * typo, an option this version lacks) and the one a generic message would hide, since the request
 * otherwise looks fine. Then a shared field type's rule, after the field's name (`board must be
 * 1-64 characters, ...`), for the first problem (`first`, inside a union's closest variant: the
 * body of POST /v1/events is one), else the schema's own message, else where the problem is.
 */
function validationMessage(v: ValidationError, where: string, problems: ValidationProblem[], first: ValueError | undefined): string {
  const unknown = firstUnknownField(problems)
  if (unknown !== undefined) return v.type === 'query' ? `unknown query parameter ${pointerKey(unknown)}` : `unknown field ${unknown} in the ${where}`
  const own = first && (first.schema as Record<string, unknown>)[RULE] === true ? schemaSentence(first, where) : schemaSentence(v.valueError as ValueError | undefined, where)
  if (own !== undefined) return own
  return typeof v.customError === 'string' ? v.customError : `invalid ${where}`
}

/**
 * Where a validation failed and what is wrong. Elysia checks coerced query/params numbers one
 * property at a time ('property' errors) without naming it: the schema names it (integerParam),
 * else we find it by its raw value.
 */
function describeValidation(v: ValidationError, request: Request): { where: string; problems: (ValidationProblem & { in: string })[]; first?: ValueError } {
  const reported = problemsWithErrors(safeAll(v), MAX_PROBLEMS)
  const problems = reported.map(({ problem }) => problem)
  const first = reported[0]?.error
  if (v.type !== 'property') return { where: v.type, problems: problems.map((p) => ({ ...p, in: v.type })), first }
  const query = new URL(request.url).searchParams
  const named = (v.validator as Record<string, unknown> | undefined)?.[PARAM_NAME]
  const found = String(v.value)
  const name = typeof named === 'string' ? named : [...query].find(([, value]) => value === found)?.[0]
  const where = name === undefined ? 'params' : query.has(name) ? 'query' : 'params'
  return {
    where: name ? `${where === 'query' ? 'query' : 'path'} parameter ${name}` : 'parameter',
    problems: problems.map((p) => ({ path: name ? `/${name}` : p.path, message: p.message, in: where })),
  }
}

function safeAll(v: ValidationError): ValueError[] {
  try {
    return v.all as ValueError[]
  } catch {
    return []
  }
}

/** What a 503 `database_unavailable` says for the SQLSTATEs an operator can act on. */
const databaseTrouble: Record<string, string> = {
  '25006': 'the database takes no writes for now (read-only: a failover or maintenance)',
  '53300': 'the database has no connection free (max_connections reached)',
  '57014': 'the database canceled the query (statement_timeout, or an operator)',
}

/**
 * A database error a retry may cure (Postgres down, restarting, out of connections, read-only, a
 * canceled query) as the 503 `database_unavailable` clients are told, or undefined for any other
 * error. One mapping for REST (errorHandler) and WebSocket frames (realtime/protocol.ts errorBody).
 */
export function databaseUnavailable(err: unknown): Unavailable | undefined {
  if (!isTransientDbError(err)) return undefined
  return new Unavailable(`${databaseTrouble[sqlStateOf(err) ?? ''] ?? 'the database is unavailable for now'}; retry shortly`, 'database_unavailable')
}

/** A 429 or 503 with its Retry-After (the answer the error plugin gives to either). */
export function retryLater(error: RateLimited | Unavailable): Response {
  const res = errorResponse(error.status, error.code, error.message, error.details)
  res.headers.set('retry-after', retryAfterSeconds(error.retryAfterMs))
  return res
}

function isBodyTooLarge(error: unknown): boolean {
  const e = error as { code?: string; message?: string } | undefined
  return e?.code === 'ERR_BODY_TOO_LARGE' || /body.*too large|exceeds.*max.*body/i.test(String(e?.message ?? ''))
}
