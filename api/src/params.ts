import { t } from 'elysia'

/** Schema key naming the parameter, read back by the error plugin to say which one was wrong. */
export const PARAM_NAME = 'x-param'

/**
 * An integer query or path parameter within [minimum, maximum]. Elysia coerces the text to a
 * number; anything else, or a number out of range, is 422 `invalid_request` with a message that
 * names the parameter and its range. Every numeric parameter needs both bounds: without a maximum
 * a huge value reaches Postgres as an out-of-range bigint (a 500) or asks for unbounded work.
 */
export function integerParam(name: string, opts: { minimum: number; maximum: number; default?: number; description?: string }) {
  return t.Integer({
    ...opts,
    error: `${name} must be an integer from ${opts.minimum} to ${opts.maximum}`,
    [PARAM_NAME]: name,
  })
}

/** Largest integer a JSON number carries exactly: the bound for ids (bigserial) given as parameters. */
export const MAX_ID = Number.MAX_SAFE_INTEGER
