import { afterEach, describe, expect, test } from 'bun:test'
import { asc } from 'drizzle-orm'
import type { StreamChange } from '../../../../core/channels'
import { changeOutbox, streams, streamViewers } from '../../../../core/db/schema'
import { until } from '../../../../core/testing/wait'
import { byChannel, caughtUp, createWorld, publishEvent, readNotices, storedEvent, type World } from '../../testing/harness'

let world: World | undefined
afterEach(async () => {
  await world?.close()
  world = undefined
})

const sample = (stream: string, viewers: number, users: string[]) => storedEvent('stream.viewers.sampled', { stream, viewers, users }, undefined, 'system')

describe('streams projection', () => {
  test('a broadcast: live, viewers, peak and unique exact through crashed batches and repeated samples; offline after the end; a new broadcast counts afresh', async () => {
    const w = (world = await createWorld())
    let crashes = 0
    const workers = await w.startWorker({
      hooks: {
        onBeforeAck: ({ projection }) => {
          // Batches "crash" after their commit: they are redelivered and must change nothing again.
          if (projection === 'streams' && crashes < 3) {
            crashes++
            throw new Error('simulated crash before ack')
          }
        },
      },
    })
    const started = storedEvent('stream.started', { stream: 'tv', title: 'Speedrun', category: 'games' })
    await publishEvent(w, started)
    await publishEvent(w, sample('tv', 3, ['ann', 'bob']))
    await caughtUp(w)
    await publishEvent(w, sample('tv', 8, ['bob', 'cat', 'dan']))
    // The same sample twice (two samplers during a hand-over): peak is a max, unique a set.
    await publishEvent(w, sample('tv', 8, ['bob', 'cat', 'dan']))
    await publishEvent(w, sample('tv', 5, ['eve']))
    await publishEvent(w, storedEvent('stream.updated', { stream: 'tv', title: 'Speedrun, part 2' }))
    await caughtUp(w)
    const [live] = await w.database.db.select().from(streams)
    expect(live).toMatchObject({ stream: 'tv', status: 'live', title: 'Speedrun, part 2', category: 'games', viewers: 5, peakViewers: 8, uniqueViewers: 5, broadcast: 1, endedAt: null })
    expect(live.startedAt?.toISOString()).toBe(started.at)

    const ended = storedEvent('stream.ended', { stream: 'tv' })
    await publishEvent(w, ended)
    await publishEvent(w, sample('tv', 4, ['zed'])) // lingering viewers after the end: ignored
    await caughtUp(w)
    const [off] = await w.database.db.select().from(streams)
    expect(off).toMatchObject({ status: 'offline', viewers: 0, peakViewers: 8, uniqueViewers: 5 })
    expect(off.endedAt?.toISOString()).toBe(ended.at)

    await publishEvent(w, storedEvent('stream.started', { stream: 'tv', title: 'Again' }))
    await publishEvent(w, sample('tv', 2, ['ann', 'fay']))
    await caughtUp(w)
    expect(crashes).toBe(3)
    const [again] = await w.database.db.select().from(streams)
    expect(again).toMatchObject({ status: 'live', title: 'Again', category: 'games', broadcast: 2, viewers: 2, peakViewers: 2, uniqueViewers: 2, endedAt: null })
    const viewers = await w.database.db.select().from(streamViewers).orderBy(asc(streamViewers.user))
    expect(viewers.map((v) => [v.user, v.broadcast])).toEqual([
      ['ann', 2],
      ['bob', 1],
      ['cat', 1],
      ['dan', 1],
      ['eve', 1],
      ['fay', 2],
    ])

    // One change per visible change, each the whole state, versions 1..n without a gap or a repeat.
    // The crashed batches' runs are published by the outbox sweeper.
    await until('outbox drained', async () => (await w.database.db.select().from(changeOutbox)).length === 0, 15_000)
    const notices = byChannel(await readNotices(w)).get('stream:tv')!
    expect(notices.map((n) => n.version)).toEqual(notices.map((_, i) => i + 1))
    const states = notices.map((n) => (n.data as StreamChange & { kind: 'state' }).state)
    expect(states.map((s) => [s.status, s.viewers, s.peakViewers, s.uniqueViewers])).toEqual([
      ['live', 0, 0, 0],
      ['live', 3, 3, 2],
      ['live', 8, 8, 4],
      ['live', 5, 8, 5],
      ['live', 5, 8, 5], // the title
      ['offline', 0, 8, 5],
      ['live', 0, 0, 0],
      ['live', 2, 2, 2],
    ])
    expect(states[4].title).toBe('Speedrun, part 2')
    await workers.stop()
  })

  test('a sample of 5,000 users, half of them seen before, counts exactly the new ones', async () => {
    const w = (world = await createWorld())
    const workers = await w.startWorker()
    await publishEvent(w, storedEvent('stream.started', { stream: 'big', title: 'Finals' }))
    const users = (from: number, n: number) => Array.from({ length: n }, (_, i) => `user-${from + i}`)
    await publishEvent(w, sample('big', 5000, users(0, 5000)))
    await publishEvent(w, sample('big', 7000, users(2500, 5000)))
    await caughtUp(w)
    const [row] = await w.database.db.select().from(streams)
    expect(row).toMatchObject({ viewers: 7000, peakViewers: 7000, uniqueViewers: 7500 })
    await workers.stop()
  })
})
