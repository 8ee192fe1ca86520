import { describe, expect, test } from 'bun:test'
import { RoomView } from './chat'
import { MatchChannelView, MatchOracle } from './matches'
import { ReactionsView } from './reactions'
import { Subscriber, type ChannelView } from './subscriber'

// The fault soak's checks must be able to fail: each view and oracle flags what it is there to catch.

const message = (id: string, text: string) => ({ kind: 'posted', message: { id, room: 'soak', user: 'u', text, postedAt: '' } })

describe('fault soak views', () => {
  test('a room: a message posted twice or before an earlier one of its lane is out of order; a delete removes it', () => {
    const room = new RoomView()
    room.snapshot({ messages: [{ id: 'b', text: '0:1' }, { id: 'a', text: '0:0' }] })
    expect(room.ids).toEqual(['a', 'b'])
    expect(room.update(message('c', '0:2'))).toBeUndefined()
    expect(room.update(message('c', '0:3'))).toContain('posted twice')
    expect(room.update(message('d', '0:1'))).toContain('lane 0: message 1 after 3')
    expect(room.update({ kind: 'deleted', messageId: 'b' })).toBeUndefined()
    expect(room.ids).toEqual(['a', 'c', 'd'])
  })

  test('reactions: a frame whose totals are not the totals held plus its counts is a change missed or applied twice', () => {
    const view = new ReactionsView()
    view.snapshot({ stream: 's', totals: { '👏': 3 } })
    expect(view.update({ counts: { '👏': 2, '🔥': 1 }, totals: { '👏': 5, '🔥': 1 } })).toBeUndefined()
    expect(view.update({ counts: { '👏': 1 }, totals: { '👏': 7 } })).toContain('👏: total 7 after 5 + 1')
  })

  test('a match: seats past its size or taken twice are out of order', () => {
    const view = new MatchChannelView()
    view.snapshot({ status: 'open', players: [] })
    for (const p of ['a', 'b', 'c']) expect(view.update({ kind: 'joined', player: p, status: 'open' })).toBeUndefined()
    expect(view.update({ kind: 'joined', player: 'a', status: 'full' })).toContain('seated twice')
    expect(view.update({ kind: 'joined', player: 'd', status: 'full' })).toContain('4 seated of 3')
  })

  test('the match oracle decides joins in order: full refuses, a leave opens a seat, an empty match does not start', () => {
    const o = new MatchOracle()
    o.apply('match.start')
    expect(o.seats.status).toBe('open')
    for (const p of ['a', 'b', 'c', 'd']) o.apply('match.join', p)
    expect(o.seats).toEqual({ status: 'full', players: ['a', 'b', 'c'].map((player) => ({ player, ready: false })) })
    expect(o.decisions.get('d')).toEqual(['full'])
    o.apply('match.leave', 'b')
    o.apply('match.join', 'd')
    expect(o.seats.players.map((p) => p.player)).toEqual(['a', 'c', 'd'])
    expect([o.accepted, o.rejected, o.changes]).toEqual([4, 1, 7])
  })
})

describe('fault soak subscriber', () => {
  const none: ChannelView = { snapshot: () => {}, update: () => undefined }
  const subscriber = () => new Subscriber('s', 'chat:x', none, () => '')
  const update = (version: number, from?: number) => ({ op: 'update', channel: 'chat:x', version, epoch: 'e', ...(from ? { from } : {}), data: {} })

  test('an update that skips a version is a silent gap, one at or below the version held a repeat; a resync snapshot is neither', () => {
    const s = subscriber()
    s.receive({ op: 'snapshot', channel: 'chat:x', version: 4, epoch: 'e', data: {} })
    s.receive(update(5))
    s.receive(update(9, 7))
    s.receive(update(9))
    expect([s.gaps, s.repeats]).toEqual([1, 1])
    s.receive({ op: 'snapshot', channel: 'chat:x', version: 20, epoch: 'e', resync: true, data: {} })
    s.receive(update(22, 21))
    expect([s.gaps, s.repeats, s.resyncs, s.version]).toEqual([1, 1, 1, 22])
    expect(s.findings(22).broken).toEqual(['s: 1 silent gaps', 's: 1 repeated versions'])
  })

  test('a resume is answered at the version and epoch asked for; from version 0, in any epoch', () => {
    const s = subscriber()
    s.receive({ op: 'snapshot', channel: 'chat:x', version: 0, epoch: '', data: {} })
    s.receive({ op: 'subscribed', channel: 'chat:x', version: 0, epoch: 'e', recovered: true })
    s.receive(update(1))
    s.receive({ op: 'subscribed', channel: 'chat:x', version: 1, epoch: 'f', recovered: true })
    expect([s.badResumes, s.gaps, s.epoch]).toEqual([1, 0, 'f'])
  })
})
