import { describe, expect, test } from 'bun:test'
import { emptyTally, evolveTally, isResend, type StreamTally } from './projection'

const fold = (emojis: string[], before: Record<string, number> = {}): StreamTally =>
  emojis.reduce((tally, emoji) => evolveTally(tally, emoji, before[emoji] ?? 0), emptyTally())

describe('evolveTally', () => {
  test('counts the batch per emoji and carries each touched emoji to its total after the batch', () => {
    expect(fold(['👏', '❤️', '👏', '👏'], { '👏': 10 })).toEqual({ counts: { '👏': 3, '❤️': 1 }, totals: { '👏': 13, '❤️': 1 } })
  })

  test('an emoji the batch does not touch is in neither counts nor totals', () => {
    expect(fold(['🔥'], { '👏': 10, '🔥': 2 })).toEqual({ counts: { '🔥': 1 }, totals: { '🔥': 3 } })
  })

  test('the total before the batch counts once, at the emoji\'s first reaction', () => {
    const once = evolveTally(emptyTally(), '👏', 5)
    // A later reaction's `before` is ignored: the tally already carries the total.
    expect(evolveTally(once, '👏', 5)).toEqual({ counts: { '👏': 2 }, totals: { '👏': 7 } })
  })

  test('never changes the tally it is given', () => {
    const tally = fold(['👏'])
    const copy = structuredClone(tally)
    evolveTally(tally, '👏', 0)
    evolveTally(tally, '🔥', 0)
    expect(tally).toEqual(copy)
  })
})

describe('isResend', () => {
  const r = { stream: 's', emoji: '👏', by: 'u:ann', id: 'r1', storedAt: 100_000, dedupWindowMs: 60_000 }
  test('the same (stream, by, id) counted within the window before is a resend; past it, a new reaction', () => {
    expect(isResend(r, undefined)).toBe(false)
    expect(isResend(r, 100_000)).toBe(true)
    expect(isResend(r, 40_000)).toBe(true)
    expect(isResend(r, 39_999)).toBe(false)
  })

  test('a reaction stored as its own message is never a resend here: JetStream de-duplicated it by msgID', () => {
    expect(isResend({ ...r, dedupWindowMs: undefined }, 100_000)).toBe(false)
  })
})
