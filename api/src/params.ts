import { Type } from '@sinclair/typebox'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import { t, ValidationError } from 'elysia'

/** Schema key naming the parameter, read back by the error plugin to say which one was wrong. */
export const PARAM_NAME = 'x-param'

/**
 * What an integer parameter may be written as: an optional sign and decimal digits. Elysia's own
 * t.Integer takes any text JavaScript reads as an integer (`0x10`, `1e1`, `5.0`, ` 5`, `0b1`), so
 * `?limit=0x10` answered 16 rows: a caller's typo became a silent guess.
 */
const DECIMAL = '^[+-]?[0-9]+$'

/**
 * An integer query or path parameter within [minimum, maximum], written in decimal (an optional
 * sign and digits, nothing else: no spaces, hex, exponent or fraction). Anything else, or a number
 * out of range, is 422 `invalid_request` with a message that names the parameter and its range.
 * Every numeric parameter needs both bounds: without a maximum a huge value reaches Postgres as an
 * out-of-range bigint (a 500) or asks for unbounded work. Every integer parameter is declared
 * through this function, so they all take the same text.
 */
export function integerParam(name: string, opts: { minimum: number; maximum: number; default?: number; description?: string }) {
  const props = { ...opts, error: `${name} must be an integer from ${opts.minimum} to ${opts.maximum}`, [PARAM_NAME]: name }
  // The shape of Elysia's t.Integer (the text, or a number such as the default, then a range
  // check on the decoded number) with a strict text: the OpenAPI document still shows an integer
  // with its bounds, and a number out of range is the same 'property' error the error plugin names.
  const integer = Type.Integer(props)
  // The text's own `error` too: a problem's message is its schema's, else TypeBox's regex quoted back.
  const check = TypeCompiler.Compile(integer)
  return t
    .Transform(t.Union([t.String({ pattern: DECIMAL, error: props.error }), integer], props))
    .Decode((value) => {
      const n = typeof value === 'number' ? value : Number(value)
      if (!check.Check(n)) throw new ValidationError('property', integer, n)
      return n
    })
    .Encode((value) => value)
}

/** Largest integer a JSON number carries exactly: the bound for ids (bigserial) given as parameters. */
export const MAX_ID = Number.MAX_SAFE_INTEGER
