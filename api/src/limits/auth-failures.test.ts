import { expect, test } from 'bun:test'
import { createAuthFailures } from './auth-failures'

const failuresAt = (clock: { t: number }) => createAuthFailures({ config: { FANFARE_AUTH_FAILURES_PER_MINUTE: 20 }, now: () => clock.t })

test('20 failures a minute per address: the 21st check is refused until one came back (3 s), other addresses are not', () => {
  const clock = { t: 0 }
  const f = failuresAt(clock)
  for (let i = 0; i < 20; i++) {
    expect(f.admit('a')).toBeUndefined()
    f.failed('a')
  }
  const refused = f.admit('a')
  expect(refused).toMatchObject({ code: 'rate_limited', retryAfterMs: 3000 })
  expect(f.admit('b')).toBeUndefined()
  clock.t += 3000
  expect(f.admit('a')).toBeUndefined()
  f.stop()
})

test('checks admitted together that all fail are all charged: the burst is paid for by a longer wait', () => {
  const clock = { t: 0 }
  const f = failuresAt(clock)
  // 50 guesses in flight at once, admitted before any failed.
  for (let i = 0; i < 50; i++) expect(f.admit('a')).toBeUndefined()
  for (let i = 0; i < 50; i++) f.failed('a')
  // 30 over the budget, and one more wanted: 31 x 3 s.
  expect(f.admit('a')?.retryAfterMs).toBe(93_000)
  f.stop()
})

test('an address is forgotten once its budget is full again', () => {
  const clock = { t: 0 }
  const f = failuresAt(clock)
  f.failed('a')
  f.prune()
  expect(f.size()).toBe(1)
  clock.t += 3000
  f.prune()
  expect(f.size()).toBe(0)
  f.stop()
})
