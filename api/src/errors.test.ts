import { describe, expect, test } from 'bun:test'
import { Type } from '@sinclair/typebox'
import { Value } from '@sinclair/typebox/value'
import { countErrorPulls, unknownKeys } from '../../core/testing/error-pulls'
import { Conflict, errorResponse, Invalid, NotFound, PayloadTooLarge, Unavailable, validationProblems } from './errors'

describe('errors', () => {
  test('each AppError carries its status and code', () => {
    expect(new Invalid('x', 'm')).toMatchObject({ status: 422, code: 'x', message: 'm' })
    expect(new Invalid('bad_json', 'm', undefined, 400).status).toBe(400)
    expect(new NotFound('player_not_ranked', 'm').status).toBe(404)
    expect(new Conflict('board_has_scores', 'm').status).toBe(409)
    expect(new PayloadTooLarge(10)).toMatchObject({ status: 413, code: 'payload_too_large' })
    expect(new Unavailable()).toMatchObject({ status: 503, code: 'unavailable' })
  })

  test('errorResponse writes the one error shape, details only when given', async () => {
    expect(await errorResponse(404, 'not_found', 'nope').json()).toEqual({ error: { code: 'not_found', message: 'nope' } })
    expect(await errorResponse(422, 'x', 'y', [1]).json()).toEqual({ error: { code: 'x', message: 'y', details: [1] } })
  })

  test('validationProblems descends into the closest union variant', () => {
    const schema = Type.Union([Type.Object({ events: Type.Array(Type.String()) }), Type.Object({ type: Type.String(), data: Type.Object({}) })])
    const problems = validationProblems(Value.Errors(schema, { type: 'x', data: 5 }))
    expect(problems).toEqual([{ path: '/data', message: expect.any(String) }])
  })

  test('a missing field is one problem saying it is required (and what it must be), not a second about the value it lacks', () => {
    // `PUT /admin/rooms/x {}` listed `must be one of "public", "private"` twice for /visibility.
    const schema = Type.Object({ visibility: Type.Union([Type.Literal('public'), Type.Literal('private')]), name: Type.String() })
    expect(validationProblems(Value.Errors(schema, {}))).toEqual([
      { path: '/visibility', message: 'is required and must be one of "public", "private"' },
      { path: '/name', message: 'is required' },
    ])
  })
})

test('validationProblems takes at most `limit` errors, from the union variants too (100k unknown keys)', async () => {
  const strict = { additionalProperties: false }
  const schema = Type.Union([Type.Object({ events: Type.Array(Type.String()) }, strict), Type.Object({ type: Type.String() }, strict)])
  const value = { type: 'x', ...unknownKeys(100_000) }
  const { value: problems, pulled } = await countErrorPulls(() => validationProblems(Value.Errors(schema, value), 10))
  expect(problems).toHaveLength(10)
  // Each variant is read only as far as it takes to rank it, not to its end.
  expect(pulled).toBeLessThanOrEqual(50)
})
