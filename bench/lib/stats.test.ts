import { expect, test } from 'bun:test'
import { quantile, summarize } from './stats'

test('quantiles by nearest rank', () => {
  const v = Array.from({ length: 100 }, (_, i) => 100 - i)
  expect(quantile(v, 0.5)).toBe(50)
  expect(quantile(v, 0.99)).toBe(99)
  expect(summarize(v)).toEqual({ count: 100, p50: 50, p99: 99, max: 100 })
  expect(summarize([]).count).toBe(0)
})
