import { describe, expect, test } from 'bun:test'
import { evolveMatch, matchView, nextGraceEnd, standingsOf, type MatchEvent, type MatchState } from './matches'

const created = (maxPlayers = 2, at = 0): MatchEvent => ({ type: 'match.created', match: 'm', mode: 'duel', maxPlayers, at, seq: 1 })
const join = (player: string, at = 1): MatchEvent => ({ type: 'match.join', match: 'm', player, at })
const leave = (player: string, at = 1, reason: 'left' | 'disconnected' | 'revoked' = 'left'): MatchEvent => ({ type: 'match.leave', match: 'm', player, reason, at })
const conn = (player: string, connected: boolean, at: number, graceMs = 100): MatchEvent => ({ type: 'match.player.connection', match: 'm', player, connected, graceMs, at })
const start = (at = 2): MatchEvent => ({ type: 'match.start', match: 'm', at })
const finish = (at = 3, results = [{ player: 'a', score: 5 }, { player: 'b', score: 7 }]): MatchEvent => ({ type: 'match.finish', match: 'm', results, at })
const abort = (at = 3): MatchEvent => ({ type: 'match.abort', match: 'm', at })

/** Runs events from nothing; returns the last state and every output. */
function run(events: MatchEvent[]) {
  let state: MatchState | undefined
  const outputs = []
  const refused: string[] = []
  const finished = []
  for (const e of events) {
    const r = evolveMatch(state, e)
    state = r.state
    outputs.push(...r.outputs)
    if (r.refused) refused.push(r.refused)
    if (r.finished) finished.push(r.finished)
  }
  return { state, outputs, refused, finished }
}

const decisions = (outputs: ReturnType<typeof run>['outputs']) => outputs.filter((o) => o.channel === 'user').map((o) => o.data)

describe('match state machine', () => {
  test('open -> full on the last seat, full -> open when a player leaves; the rest are rejected as full', () => {
    const r = run([created(2), join('a'), join('b'), join('c'), leave('a'), join('c')])
    expect(r.state!.status).toBe('full')
    expect(r.state!.players.map((p) => p.player)).toEqual(['b', 'c'])
    expect(decisions(r.outputs)).toEqual([
      { kind: 'match.join', match: 'm', accepted: true },
      { kind: 'match.join', match: 'm', accepted: true },
      { kind: 'match.join', match: 'm', accepted: false, reason: 'full' },
      { kind: 'match.join', match: 'm', accepted: true },
    ])
    expect(r.outputs.filter((o) => o.channel === 'match').map((o) => o.data.kind)).toEqual(['created', 'joined', 'joined', 'rejected', 'left', 'joined'])
  })

  test('every refusal reason: unknown_match, already_joined, full, started, finished, aborted', () => {
    expect(decisions(run([join('a')]).outputs)).toEqual([{ kind: 'match.join', match: 'm', accepted: false, reason: 'unknown_match' }])
    expect(decisions(run([created(3), join('a'), join('a')]).outputs)[1]).toMatchObject({ accepted: false, reason: 'already_joined' })
    expect(decisions(run([created(2), join('a'), start(), join('b')]).outputs)[1]).toMatchObject({ accepted: false, reason: 'started' })
    expect(decisions(run([created(2), join('a'), start(), finish(), join('b')]).outputs)[1]).toMatchObject({ accepted: false, reason: 'finished' })
    expect(decisions(run([created(2), abort(), join('b')]).outputs)[0]).toMatchObject({ accepted: false, reason: 'aborted' })
    // An unknown match's rejection goes to the player only: there is no match channel to tell.
    expect(run([join('a')]).outputs.map((o) => o.channel)).toEqual(['user'])
  })

  test('started -> finished with standings (ties share a rank), once: a second finish changes nothing', () => {
    const r = run([created(2), join('a'), join('b'), start(), finish(3), finish(4, [{ player: 'a', score: 100 }])])
    expect(r.state!.status).toBe('finished')
    expect(r.finished).toEqual([[{ player: 'b', score: 7, rank: 1 }, { player: 'a', score: 5, rank: 2 }]])
    expect(r.state!.results).toEqual(r.finished[0])
    expect(standingsOf([{ player: 'x', score: 1 }, { player: 'y', score: 3 }, { player: 'z', score: 3 }])).toEqual([
      { player: 'y', score: 3, rank: 1 },
      { player: 'z', score: 3, rank: 1 },
      { player: 'x', score: 1, rank: 3 },
    ])
  })

  test('refused transitions: created twice, finish before start, start without players, anything on an unknown match', () => {
    expect(run([created(), created()]).refused).toHaveLength(1)
    expect(run([created(), join('a'), finish()]).refused[0]).toContain('only a started match finishes')
    expect(run([created(), start()]).refused[0]).toContain('no players')
    expect(run([start(), finish(), abort()]).refused).toHaveLength(3)
    expect(run([created(), join('a'), abort(), start()]).refused[0]).toContain('aborted')
  })

  test('abort from open, full or started; a second abort changes nothing; a finish after the abort is refused (its results scored nowhere, so shown as a dead letter), as is an abort after the finish', () => {
    for (const before of [[created()], [created(), join('a'), join('b')], [created(), join('a'), start()]]) {
      const r = run([...before, abort(5), abort(6), finish(7)])
      expect(r.state!.status).toBe('aborted')
      expect(r.finished).toEqual([])
      expect(r.outputs.filter((o) => o.channel === 'match' && o.data.kind === 'aborted')).toHaveLength(1)
      expect(r.refused).toEqual(['match "m" is aborted: only a started match finishes'])
    }
    const r = run([created(), join('a'), start(), finish(5), abort(6)])
    expect([r.state!.status, r.refused]).toEqual(['finished', ['match "m" is finished: it cannot be aborted']])
    expect(run([created(), join('a'), start(), finish(5), finish(6)]).refused).toEqual([])
  })

  test('ready: a seated player once; not for others nor after start', () => {
    const r = run([created(3), join('a'), { type: 'match.ready', match: 'm', player: 'a', at: 1 }, { type: 'match.ready', match: 'm', player: 'a', at: 1 }, { type: 'match.ready', match: 'm', player: 'z', at: 1 }])
    expect(r.state!.players[0].ready).toBe(true)
    expect(r.outputs.filter((o) => o.channel === 'match' && o.data.kind === 'ready')).toHaveLength(1)
  })

  test('a disconnected player keeps the seat within the grace and reconnecting keeps it', () => {
    const r = run([created(2), join('a', 0), join('b', 0), conn('a', false, 10, 100), conn('a', true, 109), join('c', 500)])
    expect(r.state!.players.map((p) => [p.player, p.connected])).toEqual([['a', true], ['b', true]])
    expect(decisions(r.outputs).at(-1)).toMatchObject({ accepted: false, reason: 'full' })
  })

  test('past the grace the seat is given up at the first event after it, whatever event (rebuild-safe: event times only)', () => {
    const base = [created(2), join('a', 0), join('b', 0), conn('a', false, 10, 100)]
    // Too early: an API node's leave before the grace ended does nothing.
    expect(run([...base, leave('a', 50, 'disconnected')]).state!.players).toHaveLength(2)
    // At the grace end: gone, the match opens again, and c takes the seat.
    const r = run([...base, join('c', 110)])
    expect(r.state!.players.map((p) => p.player)).toEqual(['b', 'c'])
    expect(r.outputs.filter((o) => o.channel === 'match').map((o) => o.data.kind)).toEqual(['created', 'joined', 'joined', 'connection', 'left', 'joined'])
    // A reconnect after the grace comes too late.
    expect(run([...base, conn('a', true, 200)]).state!.players.map((p) => p.player)).toEqual(['b'])
    expect(nextGraceEnd(run(base).state!)).toBe(110)
  })

  test("a revoked player's seat goes at once, told as left with reason revoked; without a seat it changes nothing", () => {
    const base = [created(2), join('a', 0), join('b', 0)]
    const r = run([...base, leave('a', 10, 'revoked'), join('c', 11)])
    expect(r.state!.players.map((p) => p.player)).toEqual(['b', 'c'])
    expect(r.outputs.filter((o) => o.channel === 'match' && o.data.kind === 'left').map((o) => o.data)).toEqual([{ kind: 'left', player: 'a', reason: 'revoked', status: 'open' }])
    // Disconnected and within the grace: gone at once all the same.
    expect(run([...base, conn('a', false, 10, 1000), leave('a', 20, 'revoked')]).state!.players.map((p) => p.player)).toEqual(['b'])
    const spectator = run([...base, leave('z', 10, 'revoked')])
    expect([spectator.state!.players.length, spectator.outputs.length]).toEqual([2, run(base).outputs.length])
  })

  test('a join with a join grace seats the player not yet connected: their first connect keeps the seat, a player who never connects loses it at the first event after the grace', () => {
    const joinGraced = (player: string, at: number, graceMs = 100): MatchEvent => ({ type: 'match.join', match: 'm', player, graceMs, at })
    const base = [created(2), joinGraced('a', 0), joinGraced('b', 5)]
    const waiting = run(base).state!
    expect(waiting.players.map((p) => [p.player, p.connected, p.graceUntil])).toEqual([['a', false, 100], ['b', false, 105]])
    expect([waiting.status, nextGraceEnd(waiting)]).toEqual(['full', 100])
    expect(matchView(waiting).players[0]).toEqual({ player: 'a', ready: false, connected: false, graceUntil: new Date(100).toISOString() })
    // b connects in time; a never does: at the sweep's leave past a's grace end, a is gone and the match opens again.
    const r = run([...base, conn('b', true, 50), leave('a', 100, 'disconnected'), join('c', 101)])
    expect(r.state!.players.map((p) => [p.player, p.connected, p.graceUntil])).toEqual([['b', true, null], ['c', true, null]])
    expect(r.outputs.filter((o) => o.channel === 'match').map((o) => o.data.kind)).toEqual(['created', 'joined', 'joined', 'connection', 'left', 'joined'])
    // Joins stored before the join grace existed (no graceMs) seat the player connected, as they did then.
    expect(run([created(2), join('a', 0)]).state!.players[0]).toMatchObject({ connected: true, graceUntil: null })
  })

  test('a started match keeps going when a player leaves; finished matches ignore connections', () => {
    const r = run([created(2), join('a'), join('b'), start(), conn('a', false, 10, 0)])
    expect(r.state!.status).toBe('started')
    expect(r.state!.players.map((p) => p.player)).toEqual(['b'])
    const f = run([created(2), join('a'), start(), finish(3), conn('a', false, 10)])
    expect(f.outputs.at(-1)!.data.kind).toBe('finished')
  })

  test('results count only for the lineup (the players seated at the start, leavers included); strangers are ignored and named', () => {
    const r = run([
      created(3),
      join('a'),
      join('z'),
      leave('z'), // left the lobby before the start: not in the match
      join('b'),
      join('c'),
      start(5),
      leave('b', 6), // a leaver's loss is a real result
      conn('c', false, 7, 0), // so is a player's whose seat was given up
      finish(8, [{ player: 'a', score: 5 }, { player: 'x', score: 99 }, { player: 'b', score: 1 }, { player: 'z', score: 50 }, { player: 'c', score: 2 }]),
    ])
    expect(r.state!.lineup).toEqual(['a', 'b', 'c'])
    expect(r.finished).toEqual([[{ player: 'a', score: 5, rank: 1 }, { player: 'c', score: 2, rank: 2 }, { player: 'b', score: 1, rank: 3 }]])
    expect(r.state!.ignored).toEqual(['x', 'z'])
    expect(matchView(r.state!)).toMatchObject({ results: r.finished[0], ignored: ['x', 'z'] })
    expect(r.outputs.at(-1)!.data).toMatchObject({ kind: 'finished', results: r.finished[0], ignored: ['x', 'z'] })
    // Only strangers: the match still finishes, with no standings.
    const none = run([created(2), join('a'), start(), finish(3, [{ player: 'x', score: 1 }])])
    expect([none.state!.status, none.finished, none.state!.ignored]).toEqual(['finished', [[]], ['x']])
    // Nothing ignored: no `ignored` shown.
    expect(matchView(run([created(2), join('a'), start(), finish(3, [{ player: 'a', score: 1 }])]).state!).ignored).toBeUndefined()
  })
})
