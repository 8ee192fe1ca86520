import { afterEach, expect, test } from 'bun:test'
import { createPresenceFeed, type PresenceFeed } from './feed'
import { createPresenceView } from './view'

let feed: PresenceFeed | undefined
afterEach(() => feed?.stop())

/** A feed over a real view, with one presence subscriber whose frames are kept. */
function watching(channel: string, intervalMs: number) {
  const frames: { op: string; version: number; data: Record<string, unknown> }[] = []
  const view = createPresenceView((change) => feed!.onChange(change))
  feed = createPresenceFeed({ view, publish: (_topic, text) => void frames.push(JSON.parse(text)), maxMembers: 100, intervalMs, inc: 'n1' })
  const sink = { id: 's1', send: (text: string) => (frames.push(JSON.parse(text)), text.length), subscribe: () => {}, unsubscribe: () => {}, overflow: () => {} }
  feed.subscribe(sink, channel)
  return { view, frames }
}

test('a join or leave carries the counts: no count frame repeating them follows at the next interval', async () => {
  // Seen walking the README: every join in a small room was followed, an interval later, by
  // { kind: "count" } with the very counts the join frame had carried (a frame per join per
  // presence subscriber that changes nothing), since the node's connection count moves first.
  const { view, frames } = watching('chat:lobby', 20)
  view.apply('a', [{ channel: 'chat:lobby', connections: 1, add: [['ann', 'Ann']] }])
  await Bun.sleep(80)
  view.apply('a', [{ channel: 'chat:lobby', connections: 0, remove: [['ann', 'left']] }])
  await Bun.sleep(80)
  expect(frames.map((f) => [f.op, f.version, f.data.kind ?? null, f.data.connections, f.data.users])).toEqual([
    ['snapshot', 0, null, 0, 0],
    ['update', 1, 'join', 1, 1],
    ['update', 2, 'leave', 0, 0],
  ])

  // A count-only change (a second tab) is still told, once, at the interval.
  view.apply('a', [{ channel: 'chat:lobby', connections: 1, add: [['bob', undefined]] }])
  view.apply('a', [{ channel: 'chat:lobby', connections: 2 }])
  await Bun.sleep(80)
  expect(frames.slice(3).map((f) => [f.data.kind, f.data.connections, f.data.users])).toEqual([
    ['join', 1, 1],
    ['count', 2, 1],
  ])
})
