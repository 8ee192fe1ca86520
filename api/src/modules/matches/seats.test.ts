import { describe, expect, test } from 'bun:test'
import type { EventInput } from '../../../../core/events'
import { createLogger } from '../../../../core/logger'
import type { PresenceChange } from '../../presence/view'
import type { Db } from '../../../../core/db/client'
import type { ChangeNotice } from '../../../../core/channels'
import type { NoticeListener } from '../../realtime/start'
import { startSeatWatcher } from './seats'

/** A watcher on a fake presence; the grace sweep never runs in these tests unless `sweepMs` is given (it then finds no database). */
function watcher(peers: string[], present: Record<string, string[]> = {}, { sweepMs = 3_600_000 } = {}) {
  let listener: ((c: PresenceChange) => void) | undefined
  let feed: NoticeListener | undefined
  const published: { events: EventInput[]; by: string }[] = []
  const w = startSeatWatcher({
    presence: { node: 'node-b', peers: () => peers, onChange: (l) => ((listener = l), () => (listener = undefined)), isPresent: (ch, user) => (present[ch] ?? []).includes(user), channels: () => Object.keys(present) },
    notices: (l) => ((feed = l), () => (feed = undefined)),
    ingest: { publish: async (events, p) => (published.push({ events, by: p.kind === 'key' ? (p.root ?? p.id) : p.kind }), []) as never },
    db: undefined as unknown as Db,
    graceMs: 1234,
    logger: createLogger('silent'),
    sweepMs,
    warmupMs: 0,
  })
  return { w, change: (c: PresenceChange) => listener?.(c), notice: (n: ChangeNotice) => feed?.notice(n), published }
}

describe('seat watcher', () => {
  test('the designated node turns presence changes of match channels into connection events, as the API nodes, with the grace', async () => {
    const { w, change, published } = watcher(['node-c'])
    change({ kind: 'leave', channel: 'match:m1', user: 'gina', reason: 'disconnected' })
    change({ kind: 'join', channel: 'match:m1', user: 'gina' })
    change({ kind: 'leave', channel: 'chat:lobby', user: 'gina', reason: 'left' })
    change({ kind: 'count', channel: 'match:m1' })
    await w.stop()
    expect(published.map((p) => [p.by, p.events[0].type, p.events[0].data])).toEqual([
      ['system', 'match.player.connection', { match: 'm1', player: 'gina', connected: false, graceMs: 1234 }],
      ['system', 'match.player.connection', { match: 'm1', player: 'gina', connected: true }],
    ])
  })

  test('a node that is not the lowest id publishes nothing; nor after it stopped', async () => {
    const { w, change, published } = watcher(['node-a'])
    change({ kind: 'leave', channel: 'match:m1', user: 'gina', reason: 'disconnected' })
    await w.stop()
    change({ kind: 'join', channel: 'match:m1', user: 'gina' })
    expect(published).toEqual([])
  })

  test('leaves seen while the designated node was dead but still heard of are published once this node is designated, for players still absent', async () => {
    const peers = ['node-a']
    const present: Record<string, string[]> = { 'match:m1': [] }
    const { w, change, published } = watcher(peers, present, { sweepMs: 20 })
    // node-a (the lowest) was SIGKILLed: until the presence TTL drops it, this node is not designated.
    change({ kind: 'leave', channel: 'match:m1', user: 'gina', reason: 'disconnected' })
    change({ kind: 'leave', channel: 'match:m1', user: 'hugo', reason: 'disconnected' })
    change({ kind: 'join', channel: 'match:m1', user: 'hugo' })
    change({ kind: 'leave', channel: 'match:m1', user: 'ivan', reason: 'disconnected' })
    present['match:m1'] = ['ivan'] // back by the time this node is designated (its join not seen yet)
    await Bun.sleep(100)
    expect(published).toEqual([])
    peers.length = 0 // node-a dropped
    await Bun.sleep(100)
    await w.stop()
    expect(published.map((p) => [p.by, p.events[0].type, p.events[0].data])).toEqual([
      ['system', 'match.player.connection', { match: 'm1', player: 'gina', connected: false, graceMs: 1234 }],
    ])
  })

  test("spectators of a started match and anyone on a match that is over publish nothing; seated players do", async () => {
    const { w, change, notice, published } = watcher([])
    const at = ''
    notice({ channel: 'match:m1', version: 1, epoch: 'e', at, data: { kind: 'created', status: 'open', match: { match: 'm1', mode: 'duel', status: 'open', maxPlayers: 2, players: [], createdAt: at } } })
    notice({ channel: 'match:m1', version: 2, epoch: 'e', at, data: { kind: 'joined', player: 'gina', status: 'open' } })
    notice({ channel: 'match:m1', version: 3, epoch: 'e', at, data: { kind: 'started', status: 'started', at } })
    notice({ channel: 'match:m2', version: 9, epoch: 'e', at, data: { kind: 'finished', results: [], status: 'finished', at } })
    for (const user of ['spec', 'gina']) {
      change({ kind: 'join', channel: 'match:m1', user })
      change({ kind: 'leave', channel: 'match:m1', user, reason: 'left' })
    }
    change({ kind: 'join', channel: 'match:m2', user: 'gina' })
    await w.stop()
    expect(published.map((p) => p.events[0].data)).toEqual([
      { match: 'm1', player: 'gina', connected: true },
      { match: 'm1', player: 'gina', connected: false, graceMs: 1234 },
    ])
  })

  test('a join of a user already present in the match channel (they subscribed first) publishes their first connect after the join; absent users and other nodes publish nothing', async () => {
    const at = ''
    const joinedNotice = (player: string, version: number): ChangeNotice => ({ channel: 'match:m1', version, epoch: 'e', at, data: { kind: 'joined', player, status: 'open' } })
    const { w, notice, published } = watcher([], { 'match:m1': ['gina'] })
    notice({ channel: 'match:m1', version: 1, epoch: 'e', at, data: { kind: 'created', status: 'open', match: { match: 'm1', mode: 'duel', status: 'open', maxPlayers: 3, players: [], createdAt: at } } })
    notice(joinedNotice('gina', 2))
    notice(joinedNotice('hal', 3))
    await w.stop()
    expect(published.map((p) => [p.by, p.events[0].type, p.events[0].data])).toEqual([['system', 'match.player.connection', { match: 'm1', player: 'gina', connected: true }]])
    const other = watcher(['node-a'], { 'match:m1': ['gina'] })
    other.notice(joinedNotice('gina', 2))
    await other.w.stop()
    expect(other.published).toEqual([])
  })
})
