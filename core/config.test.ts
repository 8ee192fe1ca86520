import { expect, test } from 'bun:test'
import { loadConfig } from './config'

test('a whole-number variable written as anything but decimal digits is refused, naming it', () => {
  // Value.Convert alone read these with parseInt: "864e5" (a day, meant) became 864 ms of retention.
  for (const value of ['864e5', '10.5', '0x10', '1_000', '5 0']) {
    expect(() => loadConfig({ FANFARE_EVENT_RETENTION_MS: value })).toThrow(`FANFARE_EVENT_RETENTION_MS: not a whole number in decimal digits (got ${JSON.stringify(value)})`)
  }
  expect(() => loadConfig({ FANFARE_BATCH_SIZE: '10.5' })).toThrow(/FANFARE_BATCH_SIZE: not a whole number/)
  expect(loadConfig({ FANFARE_EVENT_RETENTION_MS: '86400000', FANFARE_BATCH_SIZE: '+20' })).toMatchObject({ FANFARE_EVENT_RETENTION_MS: 86_400_000, FANFARE_BATCH_SIZE: 20 })
  // Whitespace around the digits passes, as it always did (a value read from a file ends in a newline).
  expect(loadConfig({ FANFARE_BATCH_SIZE: '20\n' }).FANFARE_BATCH_SIZE).toBe(20)
  // Fractional settings keep their fractions.
  expect(loadConfig({ OTEL_TRACES_SAMPLER_ARG: '0.25' }).OTEL_TRACES_SAMPLER_ARG).toBe(0.25)
})

test('a retention JetStream would refuse (under 100 ms, or shorter than the de-duplication window) is refused at start, naming both', () => {
  // JetStream refuses a duplicate window longer than max_age; the process used to die on its stack trace.
  expect(() => loadConfig({ FANFARE_EVENT_RETENTION_MS: '60000' })).toThrow(
    'FANFARE_EVENT_RETENTION_MS: 60000 is shorter than FANFARE_DEDUP_WINDOW_MS (120000)',
  )
  expect(() => loadConfig({ FANFARE_EVENT_RETENTION_MS: '50', FANFARE_DEDUP_WINDOW_MS: '1000' })).toThrow(/FANFARE_EVENT_RETENTION_MS: 50 is shorter than FANFARE_DEDUP_WINDOW_MS/)
  expect(loadConfig({ FANFARE_EVENT_RETENTION_MS: '2000', FANFARE_DEDUP_WINDOW_MS: '1000' }).FANFARE_EVENT_RETENTION_MS).toBe(2000)
  expect(loadConfig({ FANFARE_EVENT_RETENTION_MS: '0' }).FANFARE_EVENT_RETENTION_MS).toBe(0)
})

test('an age JetStream cannot hold in nanoseconds (past about 292 years) is refused at start, naming the variable', () => {
  // JetStream takes max_age as int64 nanoseconds; above it the process died on "invalid JSON".
  expect(() => loadConfig({ FANFARE_EVENT_RETENTION_MS: '10000000000000' })).toThrow(/FANFARE_EVENT_RETENTION_MS: Expected integer to be less or equal to 9223372036854/)
  expect(() => loadConfig({ FANFARE_HISTORY_TTL_MS: '10000000000000' })).toThrow(/FANFARE_HISTORY_TTL_MS: Expected integer to be less or equal/)
  expect(() => loadConfig({ FANFARE_HISTORY_TTL_MS_CHAT: '10000000000000' })).toThrow(/FANFARE_HISTORY_TTL_MS_CHAT: Expected integer to be less or equal/)
  expect(loadConfig({ FANFARE_EVENT_RETENTION_MS: '9223372036854' }).FANFARE_EVENT_RETENTION_MS).toBe(9_223_372_036_854)
})
