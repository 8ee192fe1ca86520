import { describe, expect, test } from 'bun:test'
import { fullJitter, MAX_BACKOFF_MS, MAX_TIMER_MS, timingOption } from './backoff'

describe('backoff', () => {
  test('backoff options past 10 minutes, Infinity included, are 10 minutes; other timing options stop at what a timer holds', () => {
    for (const huge of [Infinity, Number.MAX_VALUE, 2 ** 31, MAX_BACKOFF_MS + 1]) expect([huge, timingOption('backoff.maxMs', huge, 30_000, MAX_BACKOFF_MS)]).toEqual([huge, MAX_BACKOFF_MS])
    expect(timingOption('backoff.maxMs', MAX_BACKOFF_MS - 1, 30_000, MAX_BACKOFF_MS)).toBe(MAX_BACKOFF_MS - 1)
    expect(timingOption('backoff.maxMs', undefined, 30_000, MAX_BACKOFF_MS)).toBe(30_000)
    expect(timingOption('pingIntervalMs', Infinity, 25_000)).toBe(MAX_TIMER_MS)
    expect(() => timingOption('backoff.maxMs', 0, 30_000, MAX_BACKOFF_MS)).toThrow('backoff.maxMs must be a positive number of milliseconds (at most 600000, Infinity: that), not 0')
  })

  test('a wait drawn from the clamped options is at most 10 minutes however many attempts failed', () => {
    const opts = { minMs: timingOption('backoff.minMs', Infinity, 250, MAX_BACKOFF_MS), maxMs: timingOption('backoff.maxMs', Infinity, 30_000, MAX_BACKOFF_MS) }
    const almostOne = () => 1 - 2 ** -40
    for (const attempt of [0, 1, 10, 30, 1000]) expect(fullJitter(attempt, opts, almostOne)).toBe(MAX_BACKOFF_MS - 1)
    // The default: 250 ms doubling, to 30 s.
    expect([1, 2, 7, 8, 50].map((a) => fullJitter(a, { minMs: 250, maxMs: 30_000 }, almostOne))).toEqual([499, 999, 29_999, 29_999, 29_999])
  })
})
