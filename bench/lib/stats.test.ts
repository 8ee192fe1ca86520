import { expect, test } from 'bun:test'
import { abba, firstAtLeast, median, quantile, summarize } from './stats'

test('quantiles by nearest rank', () => {
  const v = Array.from({ length: 100 }, (_, i) => 100 - i)
  expect(quantile(v, 0.5)).toBe(50)
  expect(quantile(v, 0.99)).toBe(99)
  expect(summarize(v)).toEqual({ count: 100, p50: 50, p99: 99, max: 100 })
  expect(summarize([]).count).toBe(0)
})

test('median of odd and even counts', () => {
  expect(median([3, 1, 2])).toBe(2)
  expect(median([4, 1, 3, 2])).toBe(2.5)
  expect(median([])).toBeNaN()
})

test('abba: each side first as often as second, every side runs its count', () => {
  expect(abba('a', 'b', 4)).toEqual(['a', 'b', 'b', 'a', 'a', 'b', 'b', 'a'])
  expect(abba('a', 'b', 3)).toEqual(['a', 'b', 'b', 'a', 'a', 'b'])
})

test('firstAtLeast: index of the first element not below the value, length when none', () => {
  expect(firstAtLeast([1, 3, 3, 5], 3)).toBe(1)
  expect(firstAtLeast([1, 3, 3, 5], 4)).toBe(3)
  expect(firstAtLeast([1, 3, 3, 5], 0)).toBe(0)
  expect(firstAtLeast([1, 3, 3, 5], 6)).toBe(4)
  expect(firstAtLeast([], 1)).toBe(0)
})
