import { describe, expect, test } from 'bun:test'
import type { EventInput } from '../../../../core/events'
import { createLogger } from '../../../../core/logger'
import type { PresenceChange } from '../../presence/view'
import type { Db } from '../../../../core/db/client'
import { startSeatWatcher } from './seats'

/** A watcher on a fake presence; the grace sweep never runs in these tests. */
function watcher(peers: string[]) {
  let listener: ((c: PresenceChange) => void) | undefined
  const published: { events: EventInput[]; by: string }[] = []
  const w = startSeatWatcher({
    presence: { node: 'node-b', peers: () => peers, onChange: (l) => ((listener = l), () => (listener = undefined)) },
    ingest: { publish: async (events, p) => (published.push({ events, by: p.kind === 'key' ? (p.root ?? p.id) : p.kind }), []) as never },
    db: undefined as unknown as Db,
    graceMs: 1234,
    logger: createLogger('silent'),
    sweepMs: 3_600_000,
    warmupMs: 0,
  })
  return { w, change: (c: PresenceChange) => listener?.(c), published }
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
})
