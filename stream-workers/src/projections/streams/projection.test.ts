import { describe, expect, test } from 'bun:test'
import { streamStateOf as stateOf } from '../../../../core/channels'
import { evolveStream, type StreamEvent, type StreamRow } from './projection'

const t0 = new Date('2025-03-01T20:00:00.000Z')
const at = (s: number) => new Date(t0.getTime() + s * 1000)
const started = (s: number, title = 'Speedrun', category?: string): StreamEvent => ({ type: 'stream.started', data: { stream: 'tv', title, ...(category ? { category } : {}) }, at: at(s) })
const sample = (s: number, viewers: number, users: string[] = []): StreamEvent => ({ type: 'stream.viewers.sampled', data: { stream: 'tv', viewers, users }, at: at(s) })
const ended = (s: number): StreamEvent => ({ type: 'stream.ended', data: { stream: 'tv' }, at: at(s) })

/** Runs events through evolveStream with an in-memory "last broadcast per user" table, as apply does. */
function run(events: StreamEvent[], start?: StreamRow) {
  let state = start
  const last = new Map<string, number>()
  const changed: StreamRow[] = []
  for (const e of events) {
    const r = evolveStream(state, e, (u) => last.get(u))
    if (!r) continue
    state = r.next
    for (const u of r.counted) last.set(u, r.next.broadcast)
    changed.push(r.next)
  }
  return { state: state!, changed, last }
}

describe('evolveStream', () => {
  test('started goes live as a new broadcast with the title, at the event time', () => {
    const { state } = run([started(0, 'Speedrun', 'games')])
    expect(stateOf(state)).toEqual({
      stream: 'tv',
      status: 'live',
      title: 'Speedrun',
      category: 'games',
      startedAt: t0.toISOString(),
      endedAt: null,
      viewers: 0,
      peakViewers: 0,
      uniqueViewers: 0,
    })
    expect(state.broadcast).toBe(1)
  })

  test('samples: current viewers, the peak is a max, unique viewers a set (repeats and duplicates count once)', () => {
    const { state, changed } = run([started(0), sample(1, 3, ['a', 'b']), sample(2, 7, ['b', 'c', 'c']), sample(3, 2, ['a']), sample(4, 2, [])])
    expect(state).toMatchObject({ viewers: 2, peakViewers: 7, uniqueViewers: 3 })
    // The last sample changed nothing visible: no change.
    expect(changed.map((s) => s.viewers)).toEqual([0, 3, 7, 2])
  })

  test('the same sample twice (a hand-over between samplers) changes nothing the second time', () => {
    const { state, changed } = run([started(0), sample(1, 5, ['a', 'b']), sample(1, 5, ['a', 'b'])])
    expect(state).toMatchObject({ viewers: 5, peakViewers: 5, uniqueViewers: 2 })
    expect(changed).toHaveLength(2)
  })

  test('ended: offline at the event time, no current viewers; peak and unique of the broadcast stay', () => {
    const { state } = run([started(0), sample(1, 4, ['a', 'b']), ended(9)])
    expect(stateOf(state)).toMatchObject({ status: 'offline', endedAt: at(9).toISOString(), viewers: 0, peakViewers: 4, uniqueViewers: 2, startedAt: t0.toISOString() })
  })

  test('samples while offline (lingering viewers after the end, or before a start) change nothing', () => {
    expect(evolveStream(undefined, sample(0, 3, ['a']), () => undefined)).toBeNull()
    const { state, changed } = run([started(0), ended(5), sample(6, 9, ['z'])])
    expect(state).toMatchObject({ viewers: 0, peakViewers: 0, uniqueViewers: 0 })
    expect(changed).toHaveLength(2)
  })

  test('a new broadcast counts peak and unique afresh: a viewer of the last one is unique again', () => {
    const { state, last } = run([started(0), sample(1, 9, ['a', 'b']), ended(2), started(10, 'Again'), sample(11, 2, ['a'])])
    expect(state).toMatchObject({ broadcast: 2, status: 'live', title: 'Again', viewers: 2, peakViewers: 2, uniqueViewers: 1, endedAt: null })
    // Compared as text: toMatchObject takes any Date for any other.
    expect(state.startedAt?.toISOString()).toBe(at(10).toISOString())
    expect([...last]).toEqual([
      ['a', 2],
      ['b', 1],
    ])
  })

  test('started keeps the last category when it gives none; started while live starts a new broadcast', () => {
    const { state } = run([started(0, 'One', 'music'), sample(1, 5, ['a']), started(3, 'Two')])
    expect(state).toMatchObject({ title: 'Two', category: 'music', broadcast: 2, peakViewers: 0, uniqueViewers: 0 })
    // Compared as text: toMatchObject takes any Date for any other.
    expect(state.startedAt?.toISOString()).toBe(at(3).toISOString())
  })

  test('updated changes title and category live or offline; the same values are no change; an unknown stream becomes known and offline', () => {
    const upd = (title?: string, category?: string): StreamEvent => ({ type: 'stream.updated', data: { stream: 'tv', ...(title ? { title } : {}), ...(category ? { category } : {}) }, at: t0 })
    const fresh = evolveStream(undefined, upd(undefined, 'chess'), () => undefined)
    expect(fresh && stateOf(fresh.next)).toMatchObject({ status: 'offline', title: null, category: 'chess', viewers: 0 })
    const { state } = run([started(0, 'A', 'x'), upd('B')])
    expect(state).toMatchObject({ status: 'live', title: 'B', category: 'x' })
    expect(evolveStream(state, upd('B', 'x'), () => undefined)).toBeNull()
  })

  test('ending an offline or unknown stream changes nothing', () => {
    expect(evolveStream(undefined, ended(0), () => undefined)).toBeNull()
    const { state } = run([started(0), ended(1)])
    expect(evolveStream(state, ended(2), () => undefined)).toBeNull()
  })
})
