import { expect, test } from 'bun:test'
import type { ChannelSnapshots } from '../protocol'
import { RESYNC } from './helper'
import { leaderboard } from './leaderboard'

type Board = ChannelSnapshots['leaderboard']
const board = (shown: [string, number][], reserve?: { size?: number; entries: [string, number][]; more: boolean }, more = true): Board => ({
  board: 'b', order: 'desc', operator: 'latest', reset: 'none', period: null, limit: 2, more,
  entries: shown.map(([player, score], i) => ({ rank: i + 1, player, score, reachedSeq: 1 })),
  ...(reserve ? { reserve: { size: reserve.size ?? 2, entries: reserve.entries.map(([player, score]) => ({ player, score, reachedSeq: 1 })), more: reserve.more } } : {}),
})
let seq = 10
const score = (player: string, s: number) => ({ player, score: s, previous: null, reachedSeq: ++seq })
const apply = (b: Board, ...us: ReturnType<typeof score>[]) => us.reduce<Board | typeof RESYNC>((s, u) => (s === RESYNC ? s : leaderboard.apply(s, u, 0)), b)
const shown = (b: Board | typeof RESYNC) => (b === RESYNC ? 'RESYNC' : b.entries.map((e) => `${e.rank}:${e.player}`).join(' '))

test('a shown player dropping is replaced from the reserve; only an empty reserve re-syncs', () => {
  const b = board([['a', 90], ['b', 80]], { entries: [['c', 70], ['d', 60]], more: true })
  // b falls below d (the last known entry) on a board with more: c moves up, no snapshot.
  const one = apply(b, score('b', 1))
  expect(shown(one)).toBe('1:a 2:c')
  expect(one !== RESYNC && one.reserve).toEqual({ size: 2, entries: [{ player: 'd', score: 60, reachedSeq: 1 }], more: true })
  // a falls below d too: d moves up; the reserve is empty but the top is still known.
  const two = apply(one as Board, score('a', 2))
  expect(shown(two)).toBe('1:c 2:d')
  // A third drop: nobody known can fill the top.
  expect(apply(two as Board, score('c', 3))).toBe(RESYNC)
  // Without a reserve (a snapshot of an older server), the first drop re-syncs, as before.
  expect(apply(board([['a', 90], ['b', 80]]), score('b', 1))).toBe(RESYNC)
})

test('an unknown player entering fills the reserve again; the reserve keeps at most limit entries', () => {
  const b = board([['a', 90], ['b', 80]], { entries: [['c', 70]], more: true })
  const up = apply(b, score('x', 75), score('y', 85))
  expect(shown(up)).toBe('1:a 2:y')
  expect(up !== RESYNC && up.reserve!.entries.map((e) => e.player)).toEqual(['b', 'x'])
  expect(up !== RESYNC && up.reserve!.more).toBe(true)
  // An unknown player below every known entry changes nothing (the same state object).
  expect(apply(up as Board, score('z', 5))).toBe(up)
  // On a board with no players beyond the known ones, a drop stays known at the end.
  const all = board([['a', 90], ['b', 80]], { entries: [['c', 70]], more: false })
  const low = apply(all, score('a', 1))
  expect(shown(low)).toBe('1:b 2:c')
  expect(low !== RESYNC && low.reserve).toEqual({ size: 2, entries: [{ player: 'a', score: 1, reachedSeq: seq }], more: false })
})

test('the reserve never holds more than its size, even below the top: a board with more then always has some', () => {
  // Board: a, b, c (3 players), a snapshot of the top 2 and an empty reserve of size 0 (more: true).
  const b = board([['a', 90], ['b', 80]], { size: 0, entries: [], more: true })
  // c moves between a and b. Keeping b hidden would leave `more` saying players follow b when none do.
  const up = apply(b, score('c', 85))
  expect(shown(up)).toBe('1:a 2:c')
  expect(up !== RESYNC && [up.more, up.reserve]).toEqual([true, { size: 0, entries: [], more: true }])
  // Now b is the only one unknown; were it known, a drop below it could not be placed either way.
  expect(apply(up as Board, score('a', 1))).toBe(RESYNC)
})
