import { expect, test } from 'bun:test'
import { countErrorPulls, unknownKeys } from '../testing/error-pulls'
import { checkData } from '.'

test('checkData reports at most 10 problems and pulls no more errors than that (100k unknown keys)', async () => {
  const data = { board: 'main', player: 'p', score: 1, ...unknownKeys(100_000) }
  const { value: problems, pulled } = await countErrorPulls(() => checkData('score.submitted', data))
  expect(problems).toHaveLength(10)
  expect(problems[0]).toEqual({ path: expect.stringMatching(/^\/data\//), message: expect.any(String) })
  expect(pulled).toBeLessThanOrEqual(10)
})
