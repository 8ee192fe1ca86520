import { describe, expect, test } from 'bun:test'
import { emptyTally, evolveTally, type StreamTally } from './projection'

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
