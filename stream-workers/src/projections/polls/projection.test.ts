import { describe, expect, test } from 'bun:test'
import { evolvePoll, viewOf, type PollEvent, type PollRow } from './projection'

const t0 = new Date('2025-03-01T20:00:00.000Z')
const at = (s: number) => new Date(t0.getTime() + s * 1000)
const opened = (s: number, closesIn?: number, options = ['red', 'blue', 'green']): PollEvent => ({
  type: 'poll.opened',
  data: { stream: 'tv', poll: 'p1', question: 'Which?', options, ...(closesIn !== undefined ? { closesAt: at(s + closesIn).toISOString() } : {}) },
  at: at(s),
})
const vote = (s: number, voter: string, option: number): PollEvent => ({ type: 'poll.voted', data: { poll: 'p1', option }, voter, at: at(s) })
const closed = (s: number): PollEvent => ({ type: 'poll.closed', data: { poll: 'p1' }, at: at(s) })

/** Runs events through evolvePoll with an in-memory votes table, as apply does. */
function run(events: PollEvent[]) {
  let state: PollRow | undefined
  const voters = new Set<string>()
  const refused: string[] = []
  for (const e of events) {
    const r = evolvePoll(state, e, (v) => voters.has(v))
    if (!r) continue
    if ('refused' in r) {
      refused.push(r.refused)
      continue
    }
    state = r.next
    if (r.vote) voters.add(r.vote.voter)
  }
  return { state: state!, voters, refused }
}
const tallies = (p: PollRow) => viewOf(p)!.options.map((o) => o.votes)

describe('evolvePoll', () => {
  test("a voter's first valid vote counts; repeats are ignored and counted", () => {
    const { state, voters } = run([opened(0), vote(1, 'u:a', 0), vote(2, 'u:b', 2), vote(3, 'u:a', 1), vote(4, 'u:a', 0)])
    expect(tallies(state)).toEqual([1, 0, 1])
    expect(state.ignoredVotes).toBe(2)
    expect([...voters].sort()).toEqual(['u:a', 'u:b'])
  })

  test('an option index past the options is ignored, and does not use up the voter\'s vote', () => {
    const { state } = run([opened(0, undefined, ['yes', 'no']), vote(1, 'u:a', 2), vote(2, 'u:a', 1)])
    expect(tallies(state)).toEqual([0, 1])
    expect(state.ignoredVotes).toBe(1)
  })

  test('votes before the poll opened are ignored and counted; the poll is not visible until it opens', () => {
    const { state } = run([vote(0, 'u:a', 0), vote(1, 'u:b', 0)])
    expect(state).toMatchObject({ status: 'pending', ignoredVotes: 2 })
    expect(viewOf(state)).toBeUndefined()
    const after = run([vote(0, 'u:a', 0), opened(1), vote(2, 'u:a', 0)]).state
    expect(viewOf(after)).toMatchObject({ status: 'open', ignoredVotes: 1, options: [{ text: 'red', votes: 1 }, { text: 'blue', votes: 0 }, { text: 'green', votes: 0 }] })
  })

  test('closed: later votes are ignored; closing again or closing an unknown poll changes nothing', () => {
    const { state } = run([opened(0), vote(1, 'u:a', 0), closed(5), vote(6, 'u:b', 1)])
    expect(viewOf(state)).toMatchObject({ status: 'closed', closedAt: at(5).toISOString(), ignoredVotes: 1 })
    expect(tallies(state)).toEqual([1, 0, 0])
    expect(evolvePoll(state, closed(7), () => false)).toBeNull()
    expect(evolvePoll(undefined, closed(7), () => false)).toBeNull()
  })

  test('closesAt is compared with the vote\'s event time: a vote at or after it is ignored and closes the poll at closesAt', () => {
    const { state } = run([opened(0, 10), vote(9, 'u:a', 0), vote(10, 'u:b', 0), vote(11, 'u:c', 0)])
    expect(tallies(state)).toEqual([1, 0, 0])
    expect(viewOf(state)).toMatchObject({ status: 'closed', closesAt: at(10).toISOString(), closedAt: at(10).toISOString(), ignoredVotes: 2 })
  })

  test('poll.closed after closesAt closes it at closesAt; a closesAt not after the opening closes it at once', () => {
    expect(run([opened(0, 10), closed(20)]).state.closedAt).toEqual(at(10))
    // Times as ISO strings: toMatchObject takes any Date for any other.
    const times = (p: PollRow) => ({ status: p.status, openedAt: p.openedAt?.toISOString(), closesAt: p.closesAt?.toISOString(), closedAt: p.closedAt?.toISOString() })
    expect(times(run([opened(0, 0)]).state)).toEqual({ status: 'closed', openedAt: at(0).toISOString(), closesAt: at(0).toISOString(), closedAt: at(0).toISOString() })
    // A closesAt already past: closed at the opening, not before it was opened.
    expect(times(run([opened(5, -3)]).state)).toEqual({ status: 'closed', openedAt: at(5).toISOString(), closesAt: at(2).toISOString(), closedAt: at(5).toISOString() })
  })

  test('a second poll.opened of the same poll is refused; the first stays', () => {
    const { state, refused } = run([opened(0), vote(1, 'u:a', 0), { ...opened(2), data: { ...(opened(2).data as object), question: 'Other?' } } as PollEvent])
    expect(refused).toEqual(['poll "p1" is already opened'])
    expect(state).toMatchObject({ question: 'Which?', votes: [1, 0, 0] })
  })
})
