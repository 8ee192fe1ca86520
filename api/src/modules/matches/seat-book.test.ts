import { describe, expect, test } from 'bun:test'
import type { ChangeNotice, MatchChange } from '../../../../core/channels'
import { createSeatBook } from './seat-book'

const view = (players: string[]) => ({ match: 'm', mode: 'duel', status: 'open' as const, maxPlayers: 3, players: players.map((player) => ({ player, ready: false, connected: true })), createdAt: '' })
const n = (version: number, data: MatchChange, epoch = 'e1', channel = 'match:m'): ChangeNotice => ({ channel, version, epoch, data, at: '' })
const created = (v = 1, epoch = 'e1') => n(v, { kind: 'created', match: view([]), status: 'open' }, epoch)
const joined = (v: number, player: string, status: 'open' | 'full' = 'open', epoch = 'e1') => n(v, { kind: 'joined', player, status }, epoch)
const started = (v: number, epoch = 'e1') => n(v, { kind: 'started', status: 'started', at: '' }, epoch)

describe('seat book', () => {
  test('a started match: its spectators are irrelevant, its players (leavers gone) are not; open matches never are', () => {
    const b = createSeatBook()
    for (const x of [created(), joined(2, 'ann'), joined(3, 'bob')]) b.notice(x)
    // Open: a join of anyone may still be on its way.
    expect([b.irrelevant('m', 'spec'), b.irrelevant('m', 'ann')]).toEqual([false, false])
    b.notice(started(4))
    expect([b.irrelevant('m', 'spec'), b.irrelevant('m', 'ann'), b.irrelevant('m', 'bob')]).toEqual([true, false, false])
    b.notice(n(5, { kind: 'left', player: 'bob', reason: 'left', status: 'started' }))
    expect(b.irrelevant('m', 'bob')).toBe(true)
    // The feed looks back: notices already in the book change nothing.
    b.notice(joined(3, 'bob'))
    expect(b.irrelevant('m', 'bob')).toBe(true)
    // Unknown matches and other channels: not known, so never irrelevant.
    b.notice(n(1, { kind: 'started', status: 'started', at: '' }, 'e1', 'match:other'))
    expect(b.irrelevant('other', 'spec')).toBe(false)
  })

  test('a match that is over: everyone is irrelevant, from any notice that says so', () => {
    const b = createSeatBook({ maxEnded: 2 })
    b.notice(n(7, { kind: 'aborted', status: 'aborted', at: '' }, 'e1', 'match:a'))
    b.notice(n(9, { kind: 'rejected', player: 'x', reason: 'finished', status: 'finished' }, 'e1', 'match:b'))
    expect([b.irrelevant('a', 'ann'), b.irrelevant('b', 'ann')]).toEqual([true, true])
    b.notice(n(1, { kind: 'aborted', status: 'aborted', at: '' }, 'e1', 'match:c'))
    // Only the last maxEnded are remembered.
    expect([b.irrelevant('a', 'ann'), b.irrelevant('c', 'ann')]).toEqual([false, true])
  })

  test('a gap or a new epoch makes an open match unsure (even once it starts); a started one keeps its seats (they only shrink)', () => {
    const b = createSeatBook()
    for (const x of [created(), joined(2, 'ann'), joined(4, 'bob'), started(5)]) b.notice(x)
    expect(b.irrelevant('m', 'spec')).toBe(false)
    const s = createSeatBook()
    for (const x of [created(), joined(2, 'ann'), started(3)]) s.notice(x)
    s.notice(n(9, { kind: 'left', player: 'ann', reason: 'left', status: 'started' }))
    s.resync()
    s.notice(n(1, { kind: 'connection', player: 'ann', connected: true, status: 'started' }, 'e2'))
    expect([s.irrelevant('m', 'spec'), s.irrelevant('m', 'ann')]).toEqual([true, true])
    const r = createSeatBook()
    for (const x of [created(), joined(2, 'ann')]) r.notice(x)
    r.resync()
    r.notice(started(3))
    expect(r.irrelevant('m', 'spec')).toBe(false)
  })

  test('a load gives matches created before the node started; newer notices win over it', () => {
    const b = createSeatBook()
    b.notice(n(6, { kind: 'left', player: 'ann', reason: 'left', status: 'started' }))
    b.load([{ match: 'm', status: 'started', players: ['ann', 'bob'], version: 5, epoch: 'e1' }])
    expect([b.irrelevant('m', 'spec'), b.irrelevant('m', 'bob'), b.irrelevant('m', 'ann')]).toEqual([true, false, false])
    b.notice(n(6, { kind: 'left', player: 'ann', reason: 'left', status: 'started' }))
    expect(b.irrelevant('m', 'ann')).toBe(true)
    b.load([{ match: 'm', status: 'started', players: ['ann', 'bob'], version: 5, epoch: 'e1' }])
    expect(b.irrelevant('m', 'ann')).toBe(true)
    b.load([{ match: 'o', status: 'open', players: ['ann'], version: 3, epoch: 'e1' }])
    expect(b.irrelevant('o', 'spec')).toBe(false)
  })
  test('a match is wanted (to be read) while the book has no sure entry of it; a read makes it sure, also after a resync or a gap', () => {
    const b = createSeatBook()
    expect(b.wants('m')).toBe(true)
    for (const x of [created(), joined(2, 'ann')]) b.notice(x)
    expect(b.wants('m')).toBe(false)
    // A resync forgets the open match (its notices may be lost): read again, it is sure, and its start counts.
    b.resync()
    expect(b.wants('m')).toBe(true)
    b.load([{ match: 'm', status: 'open', players: ['ann'], version: 2, epoch: 'e1' }])
    b.notice(started(3))
    expect([b.wants('m'), b.irrelevant('m', 'spec'), b.irrelevant('m', 'ann')]).toEqual([false, true, false])
    // A gap makes an open match unsure; a read of the version it reached makes it sure again.
    const g = createSeatBook()
    for (const x of [created(), joined(3, 'ann')]) g.notice(x)
    expect(g.wants('m')).toBe(true)
    g.load([{ match: 'm', status: 'open', players: ['ann', 'bob'], version: 3, epoch: 'e1' }])
    g.notice(started(4))
    expect([g.wants('m'), g.irrelevant('m', 'spec'), g.irrelevant('m', 'bob')]).toEqual([false, true, false])
    // A read of a match that is over ends it.
    g.load([{ match: 'x', status: 'aborted', players: [], version: 9, epoch: 'e1' }])
    expect([g.wants('x'), g.irrelevant('x', 'ann')]).toEqual([false, true])
  })

  test('at most maxLive live matches are kept: the oldest is forgotten (read again on next use, never irrelevant meanwhile)', () => {
    const b = createSeatBook({ maxLive: 2 })
    for (const m of ['a', 'b', 'c']) b.load([{ match: m, status: 'started', players: ['ann'], version: 5, epoch: 'e1' }])
    expect(['a', 'b', 'c'].map((m) => [b.wants(m), b.irrelevant(m, 'spec')])).toEqual([[true, false], [false, true], [false, true]])
     // Oldest means least recently put: a match read again is kept over one not read since.
    const r = createSeatBook({ maxLive: 2 })
    for (const [m, version] of [['a', 5], ['b', 5], ['a', 6], ['c', 5]] as const) r.load([{ match: m, status: 'started', players: ['ann'], version, epoch: 'e1' }])
    expect(['a', 'b', 'c'].map((m) => r.wants(m))).toEqual([false, true, false])
  })

  test('a match a read found no row of is missing (not wanted again) until a notice of it, a load of it, a resync, missingMs, or maxMissing newer ones', () => {
    let clock = 0
    const b = createSeatBook({ maxMissing: 2, missingMs: 1000, now: () => clock })
    b.absent(['m', 'x'])
    expect([b.missing('m'), b.wants('m'), b.irrelevant('m', 'ann')]).toEqual([true, false, false])
    // Created: its notice makes it known (and sure), no longer missing.
    b.notice(created())
    expect([b.missing('m'), b.wants('m')]).toEqual([false, false])
    // Expired: read again.
    clock = 1000
    expect([b.missing('x'), b.wants('x')]).toEqual([false, true])
    // A resync forgets them (a creation's notice may be among those lost); so does a load.
    b.absent(['x', 'y'])
    b.resync()
    expect([b.missing('x'), b.missing('y')]).toEqual([false, false])
    b.absent(['x'])
    b.load([{ match: 'x', status: 'open', players: [], version: 1, epoch: 'e1' }])
    expect(b.missing('x')).toBe(false)
    // Bounded: the oldest is forgotten first.
    b.absent(['p', 'q', 'r'])
    expect(['p', 'q', 'r'].map(b.missing)).toEqual([false, true, true])
  })
})
