import { expect, test } from 'bun:test'
import { FEED_CONSUMER_DESCRIPTION, formatReadBy, leastFormat } from './nats'

test('what a change feed reads, by the description each version gave its consumers; other consumers are not feeds', () => {
  expect(formatReadBy(FEED_CONSUMER_DESCRIPTION)).toBe('compressed')
  // The version before compressed batches (c16ef94..6d26f8e).
  expect(formatReadBy('fanfare change feed; takes live batches')).toBe('batches')
  expect(formatReadBy('fanfare change feed')).toBe('runs')
  // A history read's ordered consumer, or anything else: no say in what workers publish.
  expect(formatReadBy(undefined)).toBeUndefined()
  expect(formatReadBy('')).toBeUndefined()
  expect(formatReadBy('a consumer of mine; takes compressed batches')).toBeUndefined()
  expect(leastFormat(['compressed', 'batches', 'compressed'])).toBe('batches')
})
