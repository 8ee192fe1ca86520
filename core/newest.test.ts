import { expect, test } from 'bun:test'
import { addNewest, putNewest } from './newest'

test('putNewest keeps the last max keys put; putting a key again makes it the newest', () => {
  const m = new Map<string, number>()
  for (const [k, v] of [['a', 1], ['b', 2], ['a', 3], ['c', 4]] as const) putNewest(m, k, v, 2)
  // b was put before a's second put: b is the oldest, and goes.
  expect([...m]).toEqual([['a', 3], ['c', 4]])
  putNewest(m, 'c', 5, 2)
  expect([...m]).toEqual([['a', 3], ['c', 5]])
})

test('addNewest does the same for a set; a max of 0 keeps nothing', () => {
  const s = new Set<string>()
  for (const k of ['a', 'b', 'a', 'c']) addNewest(s, k, 2)
  expect([...s]).toEqual(['a', 'c'])
  addNewest(s, 'd', 0)
  expect(s.size).toBe(0)
})
