import { describe, expect, test } from 'bun:test'
import { defaultRules, nextScore, sumRefusal } from './projection'

describe('nextScore', () => {
  test('a first submission always creates a standing', () => {
    for (const operator of ['best', 'latest', 'sum'] as const) {
      expect(nextScore(undefined, { score: 0, seq: 7 }, { sortOrder: 'asc', operator })).toEqual({ score: 0, reachedSeq: 7 })
    }
  })

  test('best, desc: only a higher score replaces; a tie keeps the earlier holder', () => {
    const cur = { score: 10, reachedSeq: 3 }
    expect(nextScore(cur, { score: 11, seq: 9 }, defaultRules)).toEqual({ score: 11, reachedSeq: 9 })
    expect(nextScore(cur, { score: 9, seq: 9 }, defaultRules)).toBeNull()
    expect(nextScore(cur, { score: 10, seq: 9 }, defaultRules)).toBeNull()
  })

  test('best, asc: only a lower score replaces', () => {
    const rules = { sortOrder: 'asc', operator: 'best' } as const
    const cur = { score: 10, reachedSeq: 3 }
    expect(nextScore(cur, { score: 9.5, seq: 4 }, rules)).toEqual({ score: 9.5, reachedSeq: 4 })
    expect(nextScore(cur, { score: 11, seq: 4 }, rules)).toBeNull()
    expect(nextScore(cur, { score: 10, seq: 4 }, rules)).toBeNull()
  })

  test('latest: always replaces, an equal score moves reachedSeq', () => {
    for (const sortOrder of ['asc', 'desc'] as const) {
      const rules = { sortOrder, operator: 'latest' } as const
      expect(nextScore({ score: 10, reachedSeq: 3 }, { score: 2, seq: 5 }, rules)).toEqual({ score: 2, reachedSeq: 5 })
      expect(nextScore({ score: 10, reachedSeq: 3 }, { score: 10, seq: 5 }, rules)).toEqual({ score: 10, reachedSeq: 5 })
    }
  })

  test('sum: adds, negative too; adding 0 is no change', () => {
    const rules = { sortOrder: 'desc', operator: 'sum' } as const
    expect(nextScore({ score: 10, reachedSeq: 3 }, { score: 5, seq: 8 }, rules)).toEqual({ score: 15, reachedSeq: 8 })
    expect(nextScore({ score: 10, reachedSeq: 3 }, { score: -4, seq: 8 }, rules)).toEqual({ score: 6, reachedSeq: 8 })
    expect(nextScore({ score: 10, reachedSeq: 3 }, { score: 0, seq: 8 }, rules)).toBeNull()
  })

  test('sum: an increment that would take the total past ±(2^53 - 1) is refused; up to it is fine; other operators and first scores never are', () => {
    const at = (score: number) => ({ score, reachedSeq: 1 })
    const max = Number.MAX_SAFE_INTEGER
    expect(sumRefusal(at(max - 1), 1, { operator: 'sum' }, 'b', 'p')).toBeUndefined()
    expect(sumRefusal(at(max), 1, { operator: 'sum' }, 'b', 'p')).toContain('would pass 9007199254740991')
    expect(sumRefusal(at(-max), -1, { operator: 'sum' }, 'b', 'p')).toContain('would pass -9007199254740991')
    expect(sumRefusal(at(max), -1e15, { operator: 'sum' }, 'b', 'p')).toBeUndefined()
    expect(sumRefusal(at(max), 1, { operator: 'best' }, 'b', 'p')).toBeUndefined()
    expect(sumRefusal(undefined, 1e15, { operator: 'sum' }, 'b', 'p')).toBeUndefined()
  })
})
