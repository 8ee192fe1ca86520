import { describe, expect, test } from 'bun:test'
import { isPeriodKey, periodBounds, periodKey, previousKey } from './periods'

const at = (iso: string) => Date.parse(iso)

describe('leaderboard periods (UTC)', () => {
  test('keys: day, ISO week (Monday start, the week-numbering year at year ends), month', () => {
    expect(periodKey('none', at('2026-11-28T10:00:00Z'))).toBe('')
    expect(periodKey('daily', at('2026-11-28T23:59:59.999Z'))).toBe('2026-11-28')
    expect(periodKey('daily', at('2026-11-29T00:00:00Z'))).toBe('2026-11-29')
    expect(periodKey('monthly', at('2026-12-31T23:59:59Z'))).toBe('2026-12')
    expect(periodKey('weekly', at('2026-11-28T10:00:00Z'))).toBe('2026-W48') // a Saturday
    expect(periodKey('weekly', at('2026-11-30T00:00:00Z'))).toBe('2026-W49') // Monday: a new week
    expect(periodKey('weekly', at('2021-01-03T12:00:00Z'))).toBe('2020-W53') // Sunday Jan 3rd belongs to 2020's last week
    expect(periodKey('weekly', at('2024-12-30T00:00:00Z'))).toBe('2025-W01') // Monday Dec 30th starts 2025's first week
  })

  test('bounds: a period ends where the next begins; previous keys cross months and years', () => {
    expect(periodBounds('daily', at('2026-11-28T10:00:00Z'))).toEqual({ start: at('2026-11-28T00:00:00Z'), end: at('2026-11-29T00:00:00Z') })
    expect(periodBounds('weekly', at('2026-11-28T10:00:00Z'))).toEqual({ start: at('2026-11-23T00:00:00Z'), end: at('2026-11-30T00:00:00Z') })
    expect(periodBounds('monthly', at('2026-12-15T00:00:00Z'))).toEqual({ start: at('2026-12-01T00:00:00Z'), end: at('2027-01-01T00:00:00Z') })
    expect(previousKey('daily', at('2026-03-01T05:00:00Z'))).toBe('2026-02-28')
    expect(previousKey('monthly', at('2027-01-10T00:00:00Z'))).toBe('2026-12')
    expect(previousKey('weekly', at('2021-01-04T00:00:00Z'))).toBe('2020-W53')
  })

  test('keys are checked for real periods, not just their shape', () => {
    expect(isPeriodKey('daily', '2026-02-28')).toBe(true)
    expect(isPeriodKey('daily', '2026-02-30')).toBe(false)
    expect(isPeriodKey('weekly', '2020-W53')).toBe(true)
    expect(isPeriodKey('weekly', '2021-W53')).toBe(false)
    expect(isPeriodKey('monthly', '2026-13')).toBe(false)
    expect(isPeriodKey('none', '')).toBe(true)
    expect(isPeriodKey('daily', '2026-W48')).toBe(false)
  })

  test('years 0001-9999 are real under every reset, with four-digit years; year 0000 is none', () => {
    expect(periodKey('daily', at('0001-01-01T00:00:00Z'))).toBe('0001-01-01')
    expect(periodKey('monthly', at('0042-03-01T00:00:00Z'))).toBe('0042-03')
    for (const [reset, key] of [['daily', '0001-01-01'], ['daily', '0099-12-31'], ['weekly', '0001-W01'], ['weekly', '0050-W10'], ['monthly', '0001-01']] as const) expect([key, isPeriodKey(reset, key)]).toEqual([key, true])
    for (const [reset, key] of [['daily', '0000-12-31'], ['weekly', '0000-W52'], ['monthly', '0000-12']] as const) expect([key, isPeriodKey(reset, key)]).toEqual([key, false])
  })
})
