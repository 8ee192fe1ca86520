import { describe, expect, test } from 'bun:test'
import type { ReactionsChange } from '../../../core/channels'
import { mergeReactions, windowsOf } from './windows'

describe('mergeReactions', () => {
  test('sums counts and keeps the later total of each emoji', () => {
    const a = { counts: { '👏': 3, '❤️': 1 }, totals: { '👏': 13, '❤️': 1 } }
    const b = { counts: { '👏': 2, '🔥': 4 }, totals: { '👏': 15, '🔥': 4 } }
    expect(mergeReactions(a, b)).toEqual({ counts: { '👏': 5, '❤️': 1, '🔥': 4 }, totals: { '👏': 15, '❤️': 1, '🔥': 4 } })
  })

  test('a window folded change by change equals the batches taken together', () => {
    const changes: ReactionsChange[] = [
      { counts: { a: 1 }, totals: { a: 1 } },
      { counts: { b: 2 }, totals: { b: 2 } },
      { counts: { a: 3, b: 1 }, totals: { a: 4, b: 3 } },
    ]
    expect(changes.reduce(mergeReactions)).toEqual({ counts: { a: 4, b: 3 }, totals: { a: 4, b: 3 } })
  })

  test('never changes its inputs (the first may be a notice that joiners still send)', () => {
    const a = { counts: { '👏': 1 }, totals: { '👏': 1 } }
    const b = { counts: { '👏': 1 }, totals: { '👏': 2 } }
    mergeReactions(a, b)
    expect(a).toEqual({ counts: { '👏': 1 }, totals: { '👏': 1 } })
    expect(b).toEqual({ counts: { '👏': 1 }, totals: { '👏': 2 } })
  })
})

describe('windowsOf', () => {
  test('reactions channels get the configured window; other channels none', () => {
    const windowOf = windowsOf({ FANFARE_REACTION_WINDOW_MS: 750 })
    expect(windowOf('reactions:main')?.ms).toBe(750)
    expect(windowOf('leaderboard:reactions')).toBeUndefined()
    expect(windowOf('chat:main')).toBeUndefined()
    expect(windowOf('user:reactions:main')).toBeUndefined()
  })
})
