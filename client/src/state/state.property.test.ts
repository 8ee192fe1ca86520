import { describe, expect, test } from 'bun:test'
import fc from 'fast-check'
import { nextScore, type Standing } from '../../../stream-workers/src/projections/leaderboards/projection'
import { mergeReactions } from '../../../api/src/realtime/windows'
import { streamPollOf } from '../../../core/channels'
import { evolveMatch, matchView, type MatchEvent, type MatchState } from '../../../core/matches'
import type { ChannelSnapshots, ChannelUpdates, Kind } from '../protocol'
import { helpers, RESYNC } from './index'

/**
 * The state helpers' contract, checked against models of the server: after every step of any
 * sequence of changes (and of resync snapshots the server sends by itself), what the client holds,
 * as of that moment, equals what the server would snapshot then. A helper may instead answer
 * RESYNC; the client then gets a fresh snapshot (as the SDK does by subscribing again).
 *
 * The models use the server's own rules where they are code (the workers' nextScore, the API's
 * reaction merge, the matches state machine) and restate its queries where they are SQL (the ranking of a board, the latest
 * messages of a room, the open polls of a stream).
 *
 * `npm test` runs a fixed-seed slice; FANFARE_FUZZ_RUNS and FANFARE_FUZZ_SEED run more.
 */
const runs = Number(process.env.FANFARE_FUZZ_RUNS ?? 200)
const seed = Number(process.env.FANFARE_FUZZ_SEED ?? 20261128)

/** A model of one channel on the server: its snapshot now, and what a step changes. */
type Model<K extends Kind, Op> = {
  snapshot(now: number): ChannelSnapshots[K]
  /** The updates a step sends, in version order, or 'resync' when the server re-syncs by itself. */
  step(op: Op, now: number): ChannelUpdates[K][] | 'resync'
  /** Whether every change so far is sent (a windowed channel holds some back until the window ends). */
  settled?(): boolean
  /** The server sent a snapshot: changes it holds back are in it (the hub drops its window). */
  resynced?(): void
}

type Step<Op> = { op: Op } | { wait: number } | { resync: true }

/**
 * Plays the steps; after each, the client's state as of now must equal the model's snapshot
 * (both through `normalize`), and `also` (parts held that may rightly differ from a fresh
 * snapshot, checked their own way) must pass.
 */
function play<K extends Kind, Op>(kind: K, model: Model<K, Op>, steps: Step<Op>[], normalize: (s: ChannelSnapshots[K]) => unknown = (s) => s, also?: (held: ChannelSnapshots[K], step: number) => void) {
  const helper = helpers[kind] as (typeof helpers)[K]
  let now = Date.parse('2026-11-28T12:00:00Z')
  let state = model.snapshot(now)
  let resyncsAsked = 0
  for (const [i, s] of steps.entries()) {
    if ('wait' in s) now += s.wait
    else if ('resync' in s) {
      model.resynced?.()
      state = model.snapshot(now)
    } else {
      const updates = model.step(s.op, now)
      if (updates === 'resync') {
        model.resynced?.()
        state = model.snapshot(now)
      }
      else
        for (const u of updates) {
          const next = helper.apply(state as never, u as never, now) as ChannelSnapshots[K] | typeof RESYNC
          if (next === RESYNC) {
            resyncsAsked++
            model.resynced?.()
            state = model.snapshot(now)
          } else state = next
        }
    }
    if (model.settled && !model.settled()) continue
    const held = helper.at ? helper.at(state as never, now) : state
    const truth = model.snapshot(now)
    if (!Bun.deepEquals(normalize(held as ChannelSnapshots[K]), normalize(truth))) {
      expect({ step: i, what: s, held: normalize(held as ChannelSnapshots[K]) }).toEqual({ step: i, what: s, held: normalize(truth) })
    }
    also?.(held as ChannelSnapshots[K], i)
  }
  return { resyncsAsked }
}

/** `size`: how long the sequences tend to be (fast-check's default is short ones). */
const steps = <Op>(op: fc.Arbitrary<Op>, wait = fc.integer({ min: 0, max: 0 }), size: fc.SizeForArbitrary = 'small') =>
  fc.array(
    fc.oneof(
      { weight: 20, arbitrary: op.map((o) => ({ op: o })) },
      { weight: 2, arbitrary: wait.map((w) => ({ wait: w })) },
      { weight: 1, arbitrary: fc.constant({ resync: true as const }) },
    ),
    { maxLength: 80, size },
  )

const check = (p: fc.IPropertyWithHooks<any> | fc.IProperty<any>) => fc.assert(p, { numRuns: runs, seed, endOnFailure: true })

describe('state helpers equal the server snapshot after any updates', () => {
  test('leaderboards: any order, operator, top size, reserve (or none), ties, commits out of stream order, scores of another period', () => {
    type Op = { player: number; score: number; priority: number; otherPeriod: boolean }
    const op = fc.record({ player: fc.integer({ min: 0, max: 7 }), score: fc.integer({ min: -3, max: 6 }), priority: fc.nat(1000), otherPeriod: fc.boolean() })
    check(
      fc.property(
        fc.constantFrom('asc' as const, 'desc' as const),
        fc.constantFrom('best' as const, 'latest' as const, 'sum' as const),
        fc.integer({ min: 1, max: 5 }),
        // The snapshot's reserve size: none (servers before it), smaller or larger than the top.
        fc.option(fc.integer({ min: 0, max: 7 }), { nil: undefined }),
        fc.boolean(),
        steps(op),
        (order, operator, limit, reserveSize, periods, list) => {
          // Sequences as JetStream stored the events: a player's in their order (one key), players
          // interleaved at random, so workers commit a lower reachedSeq after a higher one.
          const ops = list.flatMap((s) => ('op' in s ? [s.op] : []))
          const byPriority = ops.map((o, i) => ({ o, i })).sort((a, b) => a.o.priority - b.o.priority || a.i - b.i)
          const seqOf = new Map<Op, number>()
          const perPlayer = new Map<number, number[]>()
          byPriority.forEach(({ o }, rank) => perPlayer.set(o.player, [...(perPlayer.get(o.player) ?? []), rank + 1]))
          for (const [player, seqs] of perPlayer) {
            seqs.sort((a, b) => a - b)
            ops.filter((o) => o.player === player).forEach((o, k) => seqOf.set(o, seqs[k]))
          }
          const period = periods ? '2026-11-28' : null
          const standings = new Map<string, Standing>()
          const ranked = () =>
            [...standings].sort(([pa, a], [pb, b]) =>
              a.score !== b.score ? (order === 'asc' ? a.score - b.score : b.score - a.score) : a.reachedSeq - b.reachedSeq || (pa < pb ? -1 : 1),
            )
          const model: Model<'leaderboard', Op> = {
            snapshot: () => {
              const all = ranked()
              const reserve = reserveSize === undefined ? undefined : all.slice(limit, limit + reserveSize).map(([player, s]) => ({ player, score: s.score, reachedSeq: s.reachedSeq }))
              return {
                board: 'b',
                order,
                operator,
                reset: periods ? 'daily' : 'none',
                period,
                entries: all.slice(0, limit).map(([player, s], i) => ({ rank: i + 1, player, score: s.score, reachedSeq: s.reachedSeq })),
                limit,
                more: all.length > limit,
                ...(reserve ? { reserve: { size: reserveSize!, entries: reserve, more: all.length > limit + reserve.length } } : {}),
              }
            },
            step: (o) => {
              const player = `p${o.player}`
              if (o.otherPeriod && periods) return [{ player, score: o.score, previous: null, period: '2026-11-27', reachedSeq: seqOf.get(o)! }]
              const current = standings.get(player)
              const next = nextScore(current, { score: o.score, seq: seqOf.get(o)! }, { sortOrder: order, operator })
              if (!next) return []
              standings.set(player, next)
              return [{ player, score: next.score, previous: current?.score ?? null, ...(period ? { period } : {}), reachedSeq: next.reachedSeq }]
            },
          }
          // The shown board equals a fresh snapshot's; the reserve held may be shorter than a fresh
          // one (players dropped out of it), but it is always the board's next entries, exactly,
          // with `more` exact too, and never longer than its `size`.
          const truthReserve = (n: number) => {
            const all = ranked()
            return { size: reserveSize!, entries: all.slice(limit, limit + n).map(([player, s]) => ({ player, score: s.score, reachedSeq: s.reachedSeq })), more: all.length > limit + n }
          }
          play('leaderboard', model, list, ({ reserve: _, ...s }) => s, (held, i) => {
            expect('reserve' in held).toBe(reserveSize !== undefined)
            if (!held.reserve) return
            const n = held.reserve.entries.length
            if (!Bun.deepEquals(held.reserve, truthReserve(n))) expect({ step: i, reserve: held.reserve }).toEqual({ step: i, reserve: truthReserve(n) })
            expect(n).toBeLessThanOrEqual(reserveSize!)
          })
        },
      ),
    )
  })

  test('leaderboards: a change without reachedSeq (stored before it existed) is re-synced', () => {
    const model = (limit: number) => {
      const standings = new Map<string, number>()
      let seq = 0
      const seqs = new Map<string, number>()
      const m: Model<'leaderboard', { player: string; score: number }> = {
        snapshot: () => {
          const all = [...standings].sort(([pa, a], [pb, b]) => b - a || seqs.get(pa)! - seqs.get(pb)!)
          return {
            board: 'b', order: 'desc', operator: 'latest', reset: 'none', period: null, limit, more: all.length > limit,
            entries: all.slice(0, limit).map(([player, score], i) => ({ rank: i + 1, player, score, reachedSeq: seqs.get(player)! })),
          }
        },
        step: ({ player, score }) => {
          const previous = standings.get(player) ?? null
          standings.set(player, score)
          seqs.set(player, ++seq)
          return [{ player, score, previous }]
        },
      }
      return m
    }
    const ops = (pairs: [string, number][]) => pairs.map(([player, score]) => ({ op: { player, score } }))
    // Only the server knows who reached a score first: every such change asks for a snapshot.
    expect(play('leaderboard', model(3), ops([['a', 5], ['b', 7], ['e', 7], ['c', 1]])).resyncsAsked).toBe(4)
  })

  test('rooms: posts and deletions, full and not full', () => {
    type Op = { post: true } | { delete: number }
    const op: fc.Arbitrary<Op> = fc.oneof(fc.constant({ post: true as const }), fc.nat(12).map((n) => ({ delete: n })))
    check(
      fc.property(fc.integer({ min: 1, max: 4 }), steps(op), (limit, list) => {
        const messages: { id: string; user: string; text: string; postedAt: string; deleted: boolean }[] = []
        const model: Model<'chat', Op> = {
          snapshot: () => ({
            room: 'r',
            messages: messages.filter((m) => !m.deleted).reverse().slice(0, limit).map(({ deleted: _, ...m }) => m),
            limit,
          }),
          step: (o, now) => {
            if ('post' in o) {
              const m = { id: `m${messages.length}`, user: 'u', text: `t${messages.length}`, postedAt: new Date(now).toISOString(), deleted: false }
              messages.push(m)
              const { deleted: _, ...message } = m
              return [{ kind: 'posted', message: { ...message, room: 'r' } }]
            }
            const m = messages[o.delete]
            if (!m || m.deleted) return []
            m.deleted = true
            return [{ kind: 'deleted', messageId: m.id }]
          },
        }
        play('chat', model, list)
      }),
    )
  })

  test('presence: joins, leaves and counts; crossing the member limit comes as a snapshot', () => {
    type Op = { join: number; name?: string } | { leave: number } | { connections: number }
    const op: fc.Arbitrary<Op> = fc.oneof(
      fc.record({ join: fc.nat(6), name: fc.option(fc.constantFrom('Ann', 'Bob'), { nil: undefined }) }, { requiredKeys: ['join'] }),
      fc.record({ leave: fc.nat(6) }),
      fc.record({ connections: fc.integer({ min: -2, max: 3 }) }),
    )
    check(
      fc.property(fc.integer({ min: 1, max: 4 }), steps(op), (maxMembers, list) => {
        const users = new Map<string, string | undefined>()
        let anonymous = 0
        const counts = () => ({ connections: users.size + anonymous, users: users.size })
        const model: Model<'presence', Op> = {
          snapshot: (now) => ({
            channel: 'chat:lobby',
            ...counts(),
            ...(users.size <= maxMembers
              ? { members: [...users].map(([user, name]) => ({ user, ...(name !== undefined ? { name } : {}) })).sort((a, b) => (a.user < b.user ? -1 : 1)) }
              : {}),
            asOf: new Date(now).toISOString(),
          }),
          step: (o) => {
            const small = users.size <= maxMembers
            let change: ChannelUpdates['presence'] | undefined
            if ('join' in o) {
              const user = `u${o.join}`
              if (users.has(user)) return []
              users.set(user, o.name)
              change = { kind: 'join', user, ...(o.name !== undefined ? { name: o.name } : {}), ...counts() }
            } else if ('leave' in o) {
              const user = `u${o.leave}`
              if (!users.delete(user)) return []
              change = { kind: 'leave', user, reason: 'left', ...counts() }
            } else {
              anonymous = Math.max(0, anonymous + o.connections)
              change = { kind: 'count', ...counts() }
            }
            if (small !== users.size <= maxMembers) return 'resync'
            return [users.size <= maxMembers ? change : { kind: 'count', ...counts() }]
          },
        }
        // asOf is the moment the state was made: the client's own clock, not the server's.
        play('presence', model, list, ({ asOf: _, ...s }) => s)
      }),
    )
  })

  test('streams: state changes, polls opening, tallying and closing, by event or by time', () => {
    type Op = { title: number } | { open: number; closesIn?: number } | { vote: number } | { close: number }
    const op: fc.Arbitrary<Op> = fc.oneof(
      fc.record({ title: fc.nat(3) }),
      fc.record({ open: fc.nat(3), closesIn: fc.option(fc.integer({ min: 1, max: 5000 }), { nil: undefined }) }, { requiredKeys: ['open'] }),
      fc.record({ vote: fc.nat(3) }),
      fc.record({ close: fc.nat(3) }),
    )
    check(
      fc.property(steps(op, fc.integer({ min: 0, max: 3000 })), (list) => {
        const { model, pollView } = pollsModel()
        let state: ChannelSnapshots['stream'] = {
          stream: 's', status: 'live', title: 't', category: null, startedAt: '2026-11-28T11:00:00.000Z', endedAt: null, viewers: 0, peakViewers: 0, uniqueViewers: 0, polls: [],
        }
        const open = (now: number) =>
          [...model.polls.keys()]
            .map((id) => streamPollOf(pollView(id, now)))
            .filter((p) => p.status === 'open')
            .sort((a, b) => (a.openedAt !== b.openedAt ? (a.openedAt > b.openedAt ? -1 : 1) : a.poll < b.poll ? -1 : 1))
        const stream: Model<'stream', Op> = {
          snapshot: (now) => {
            const polls = open(now)
            const { poll: _, polls: __, ...fields } = state
            return { ...fields, ...(polls[0] ? { poll: polls[0] } : {}), polls }
          },
          step: (o, now) => {
            if ('title' in o) {
              const { poll: _, polls: __, ...fields } = state
              state = { ...fields, title: `title ${o.title}`, viewers: o.title, polls: [] }
              const { polls: ___, ...changed } = state
              return [{ kind: 'state', state: changed }]
            }
            const changed = model.step(o, now)
            // As the polls projection announces on `stream:`: a poll opening or closing, not a vote,
            // and without live tallies.
            return changed && !('vote' in o) ? [{ kind: 'poll', poll: streamPollOf(changed) }] : []
          },
        }
        // Nothing is left out of the comparison: the channel carries no live tallies, so what a
        // client holds at a version is exactly what a snapshot then holds.
        play('stream', stream, list)
      }),
    )
  })

  test('polls: one poll through opening, votes, closing by event or by time', () => {
    type Op = { open: number; closesIn?: number } | { vote: number } | { close: number }
    const op: fc.Arbitrary<Op> = fc.oneof(
      fc.record({ open: fc.constant(0), closesIn: fc.option(fc.integer({ min: 1, max: 5000 }), { nil: undefined }) }, { requiredKeys: ['open'] }),
      fc.record({ vote: fc.constant(0) }),
      fc.record({ close: fc.constant(0) }),
    )
    check(
      fc.property(steps(op, fc.integer({ min: 0, max: 3000 })), (list) => {
        const { model, pollView } = pollsModel()
        const poll: Model<'poll', Op> = {
          snapshot: (now) => (model.polls.has(0) ? pollView(0, now) : null),
          step: (o, now) => {
            const changed = model.step(o, now)
            return changed ? [{ kind: 'poll', poll: changed }] : []
          },
        }
        play('poll', poll, list)
      }),
    )
  })

  test('reactions: windows of merged changes', () => {
    type Op = { react: [string, number][] } | { flush: true }
    const op: fc.Arbitrary<Op> = fc.oneof(
      fc.record({ react: fc.array(fc.tuple(fc.constantFrom('👏', '🔥', '❤️'), fc.integer({ min: 1, max: 5 })), { minLength: 1, maxLength: 3 }) }),
      fc.constant({ flush: true as const }),
    )
    check(
      fc.property(steps(op), (list) => {
        const totals: Record<string, number> = {}
        let window: ChannelUpdates['reactions'] | undefined
        const model: Model<'reactions', Op> = {
          snapshot: () => ({ stream: 's', totals: { ...totals } }),
          step: (o) => {
            if ('flush' in o) {
              const out = window ? [window] : []
              window = undefined
              return out
            }
            // A worker batch: its counts and the totals after it, merged into the window as the hub does.
            const change: ChannelUpdates['reactions'] = { counts: {}, totals: {} }
            for (const [emoji, n] of o.react) {
              totals[emoji] = (totals[emoji] ?? 0) + n
              change.counts[emoji] = (change.counts[emoji] ?? 0) + n
              change.totals[emoji] = totals[emoji]
            }
            window = window ? mergeReactions(window, change) : change
            return []
          },
          // Changes held in an open window are not the client's yet: compare at window ends only.
          settled: () => window === undefined,
          resynced: () => void (window = undefined),
        }
        play('reactions', model, [...list, { op: { flush: true } }])
      }),
    )
  })

  test('matches: joins racing for seats, leaves, ready, disconnects and graces, start, finish, abort', () => {
    type Op =
      | { type: 'match.created'; maxPlayers: number }
      | { type: 'match.join'; player: number; graceMs?: number }
      | { type: 'match.leave' | 'match.ready'; player: number }
      | { type: 'match.player.connection'; player: number; connected: boolean; graceMs: number }
      | { type: 'match.start' | 'match.abort' }
      | { type: 'match.finish'; scores: number[] }
    const player = fc.integer({ min: 0, max: 3 })
    const op: fc.Arbitrary<Op> = fc.oneof(
      { weight: 1, arbitrary: fc.record({ type: fc.constant('match.created' as const), maxPlayers: fc.integer({ min: 2, max: 4 }) }) },
      { weight: 4, arbitrary: fc.record({ type: fc.constantFrom('match.leave' as const, 'match.ready' as const), player }) },
      // Joins with the join grace the API nodes stamp (the seat waits for its player), and without (stored before it existed).
      {
        weight: 2,
        arbitrary: fc.record({ type: fc.constant('match.join' as const), player, graceMs: fc.option(fc.integer({ min: 0, max: 2000 }), { nil: undefined }) }, { requiredKeys: ['type', 'player'] }),
      },
      { weight: 3, arbitrary: fc.record({ type: fc.constant('match.player.connection' as const), player, connected: fc.boolean(), graceMs: fc.integer({ min: 0, max: 2000 }) }) },
      { weight: 1, arbitrary: fc.record({ type: fc.constantFrom('match.start' as const, 'match.abort' as const) }) },
      { weight: 1, arbitrary: fc.record({ type: fc.constant('match.finish' as const), scores: fc.array(fc.integer({ min: 0, max: 3 }), { maxLength: 4 }) }) },
    )
    check(
      // Long sequences: a match has to be created, seated and started before most rules matter.
      fc.property(steps(op, fc.integer({ min: 0, max: 3000 }), 'large'), (list) => {
        let state: MatchState | undefined
        let seq = 0
        const event = (o: Op, at: number): MatchEvent => {
          const match = 'm'
          switch (o.type) {
            case 'match.created':
              return { type: o.type, match, mode: 'duel', maxPlayers: o.maxPlayers, at, seq: ++seq }
            case 'match.leave':
              return { type: o.type, match, player: `p${o.player}`, reason: 'left', at }
            case 'match.join':
              return { type: o.type, match, player: `p${o.player}`, ...(o.graceMs !== undefined ? { graceMs: o.graceMs } : {}), at }
            case 'match.ready':
              return { type: o.type, match, player: `p${o.player}`, at }
            case 'match.player.connection':
              return { type: o.type, match, player: `p${o.player}`, connected: o.connected, graceMs: o.graceMs, at }
            case 'match.finish':
              return { type: o.type, match, results: o.scores.map((score, i) => ({ player: `p${i}`, score })), at }
            default:
              return { type: o.type, match, at }
          }
        }
        const model: Model<'match', Op> = {
          snapshot: () => (state ? matchView(state) : null),
          step: (o, now) => {
            const evolved = evolveMatch(state, event(o, now))
            state = evolved.state
            return evolved.outputs.flatMap((out) => (out.channel === 'match' ? [out.data] : []))
          },
        }
        const { resyncsAsked } = play('match', model, list)
        // Only an update before the match exists (never sent: nothing is told of an unknown match) asks.
        expect(resyncsAsked).toBe(0)
      }),
    )
  })
})

/** Polls as the server keeps them (status, closesAt, votes) and shows them (pollView). */
function pollsModel() {
  type Row = { openedAt: number; closesAt?: number; closedAt?: number; votes: number }
  const polls = new Map<number, Row>()
  const pollView = (id: number, now: number): NonNullable<ChannelSnapshots['poll']> => {
    const r = polls.get(id)!
    const expired = r.closedAt === undefined && r.closesAt !== undefined && r.closesAt <= now
    const closedAt = expired ? r.closesAt : r.closedAt
    return {
      poll: `poll${id}`,
      stream: 's',
      question: 'q',
      status: closedAt === undefined ? 'open' : 'closed',
      options: [{ text: 'yes', votes: r.votes }],
      ignoredVotes: 0,
      openedAt: new Date(r.openedAt).toISOString(),
      ...(r.closesAt !== undefined ? { closesAt: new Date(r.closesAt).toISOString() } : {}),
      ...(closedAt !== undefined ? { closedAt: new Date(closedAt).toISOString() } : {}),
    }
  }
  const model = {
    polls,
    /** The poll a step changed, as the workers announce it (their view at commit time). */
    step(o: { open: number; closesIn?: number } | { vote: number } | { close: number }, now: number) {
      if ('open' in o) {
        if (polls.has(o.open)) return undefined
        polls.set(o.open, { openedAt: now, votes: 0, ...(o.closesIn !== undefined ? { closesAt: now + o.closesIn } : {}) })
        return pollView(o.open, now)
      }
      const id = 'vote' in o ? o.vote : o.close
      const r = polls.get(id)
      if (!r || pollView(id, now).status === 'closed') return undefined
      if ('vote' in o) r.votes++
      else r.closedAt = now
      return pollView(id, now)
    },
  }
  return { model, pollView }
}
