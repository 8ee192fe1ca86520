import { expect, test } from 'bun:test'
import { tokenBucket } from './token-bucket'

test('a burst up to the capacity, then one per refill interval, with the wait until the next', () => {
  let t = 0
  const bucket = tokenBucket({ capacity: 3, perSecond: 10, now: () => t })
  expect([bucket.take(), bucket.take(), bucket.take()]).toEqual([0, 0, 0])
  expect(bucket.take()).toBe(100)
  t += 50
  expect(bucket.take()).toBe(50)
  t += 50
  expect(bucket.take()).toBe(0)
  t += 10_000 // refills to the capacity, no further
  expect([bucket.take(), bucket.take(), bucket.take(), bucket.take()]).toEqual([0, 0, 0, 100])
})

test('several tokens at once: all or none, with the wait until all are there', () => {
  let t = 0
  const bucket = tokenBucket({ capacity: 10, perSecond: 10, now: () => t })
  expect(bucket.take(7)).toBe(0)
  expect(bucket.take(5)).toBe(200) // 3 left, 2 missing
  expect(bucket.wait(3)).toBe(0) // nothing was spent by the refusal
  expect(bucket.full()).toBe(false)
  t += 700
  expect(bucket.full()).toBe(true)
})


test('spend goes into debt: the wait then covers what was overspent', () => {
  let t = 0
  const bucket = tokenBucket({ capacity: 2, perSecond: 10, now: () => t })
  bucket.spend(5) // 3 owed
  expect(bucket.wait()).toBe(400) // 3 owed + 1 wanted, at 10/s
  t += 400
  expect(bucket.take()).toBe(0)
})
