/**
 * Leaderboard periods: a board with a reset keeps one standing per player per period. A score
 * counts in the period of its event time (JetStream's stored time, never a worker's clock), so a
 * rebuild puts every score in the same period again. All in UTC.
 * - none: one period, key '';
 * - daily: `YYYY-MM-DD`; weekly: the ISO week `YYYY-Www` (weeks start on Monday; the year is the
 *   ISO week-numbering year); monthly: `YYYY-MM`.
 */
export const resets = ['none', 'daily', 'weekly', 'monthly'] as const
export type Reset = (typeof resets)[number]

const pad = (n: number, width = 2) => String(n).padStart(width, '0')
const DAY = 86_400_000

/** Midnight UTC of a calendar date; unlike Date.UTC, years 0-99 are those years, not 1900-1999. */
const utcDate = (year: number, month: number, day: number) => new Date(0).setUTCFullYear(year, month, day)

/** Midnight UTC of the day holding `t`. */
const dayStart = (t: number) => Math.floor(t / DAY) * DAY

/** The Monday (UTC midnight) of the ISO week holding `t`. */
function weekStart(t: number): number {
  const d = dayStart(t)
  const weekday = (new Date(d).getUTCDay() + 6) % 7 // Monday 0 .. Sunday 6
  return d - weekday * DAY
}

/** ISO week-numbering year and week of the week starting `monday`. */
function isoWeek(monday: number): { year: number; week: number } {
  const thursday = new Date(monday + 3 * DAY)
  const year = thursday.getUTCFullYear()
  const jan4 = utcDate(year, 0, 4)
  const week = Math.round((monday - weekStart(jan4)) / (7 * DAY)) + 1
  return { year, week }
}

/** The period key of an instant under a reset. */
export function periodKey(reset: Reset, at: Date | number): string {
  const t = typeof at === 'number' ? at : at.getTime()
  const d = new Date(t)
  switch (reset) {
    case 'none':
      return ''
    case 'daily':
      return `${pad(d.getUTCFullYear(), 4)}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`
    case 'weekly': {
      const { year, week } = isoWeek(weekStart(t))
      return `${pad(year, 4)}-W${pad(week)}`
    }
    case 'monthly':
      return `${pad(d.getUTCFullYear(), 4)}-${pad(d.getUTCMonth() + 1)}`
    default: {
      const never: never = reset
      throw new Error(`unknown reset ${String(never)}`)
    }
  }
}

/** When the period holding `at` began and when the next one begins (ms since the epoch); none: [-inf, +inf). */
export function periodBounds(reset: Reset, at: Date | number): { start: number; end: number } {
  const t = typeof at === 'number' ? at : at.getTime()
  switch (reset) {
    case 'none':
      return { start: Number.NEGATIVE_INFINITY, end: Number.POSITIVE_INFINITY }
    case 'daily': {
      const start = dayStart(t)
      return { start, end: start + DAY }
    }
    case 'weekly': {
      const start = weekStart(t)
      return { start, end: start + 7 * DAY }
    }
    case 'monthly': {
      const d = new Date(t)
      return { start: utcDate(d.getUTCFullYear(), d.getUTCMonth(), 1), end: utcDate(d.getUTCFullYear(), d.getUTCMonth() + 1, 1) }
    }
    default: {
      const never: never = reset
      throw new Error(`unknown reset ${String(never)}`)
    }
  }
}

/** The key of the period before the one holding `at` (none: ''). */
export function previousKey(reset: Reset, at: Date | number): string {
  if (reset === 'none') return ''
  return periodKey(reset, periodBounds(reset, at).start - 1)
}

/** Years 0001-9999, four digits (year 0000 is no year of the calendar the keys count in). */
const YEAR = '(?!0000)\\d{4}'
const patterns: Record<Reset, RegExp> = {
  none: /^$/,
  daily: new RegExp(`^${YEAR}-(0[1-9]|1[0-2])-(0[1-9]|[12]\\d|3[01])$`),
  weekly: new RegExp(`^${YEAR}-W(0[1-9]|[1-4]\\d|5[0-3])$`),
  monthly: new RegExp(`^${YEAR}-(0[1-9]|1[0-2])$`),
}

/**
 * Whether `key` is a period key of this reset (a real day, an existing ISO week, a month), of the
 * years 0001-9999 under every reset alike: keys are what periodKey makes (four-digit years).
 */
export function isPeriodKey(reset: Reset, key: string): boolean {
  if (!patterns[reset].test(key)) return false
  if (reset === 'daily') return periodKey('daily', Date.parse(`${key}T00:00:00Z`)) === key
  if (reset === 'weekly') {
    // Week 53 exists only in some years: the Monday of the claimed week must number it so.
    const [year, week] = [Number(key.slice(0, 4)), Number(key.slice(6))]
    const monday = weekStart(utcDate(year, 0, 4)) + (week - 1) * 7 * DAY
    return periodKey('weekly', monday) === key
  }
  return true
}
