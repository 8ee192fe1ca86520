import { afterEach, describe, expect, test } from 'bun:test'
import type { PollChange, StreamChange } from '../../../../core/channels'
import { changeOutbox, deadLetters, polls, pollVotes } from '../../../../core/db/schema'
import type { StoredEvent } from '../../../../core/events'
import { until } from '../../../../core/testing/wait'
import { byChannel, caughtUp, createWorld, publishEvent, readNotices, storedEvent, type World } from '../../testing/harness'

let world: World | undefined
afterEach(async () => {
  await world?.close()
  world = undefined
})

const t0 = Date.now()
/** An event at a chosen event time (seconds after t0). */
const timed = (e: StoredEvent, s: number): StoredEvent => ({ ...e, at: new Date(t0 + s * 1000).toISOString() })
const vote = (poll: string, voter: string, option: number, s: number) => timed(storedEvent('poll.voted', { poll, option }, undefined, `u:${voter}`), s)

describe('polls projection', () => {
  test("each voter's first valid vote counts, everything else is ignoredVotes: exact through crashed batches; one change per poll per batch", async () => {
    // Small batches: votes of one voter fall in different batches, and several batches crash.
    const w = (world = await createWorld({ FANFARE_BATCH_SIZE: '20' }))
    // Before the poll opens: ignored.
    await publishEvent(w, vote('p1', 'early', 0, 0))
    await publishEvent(w, timed(storedEvent('poll.opened', { stream: 'tv', poll: 'p1', question: 'Best level?', options: ['one', 'two', 'three'], closesAt: new Date(t0 + 100_000).toISOString() }), 1))
    const oracle = [0, 0, 0]
    let ignored = 1
    const first = new Set<string>()
    for (let i = 0; i < 120; i++) {
      // Each voter votes twice in a row (one batch) and some again later (another batch): the first counts.
      const voter = `v${Math.floor(i / 2) % 40}`
      const option = (i * 7) % 4 // option 3 is past the options: ignored, and does not use up the vote
      await publishEvent(w, vote('p1', voter, option, 2))
      if (option < 3 && !first.has(voter)) {
        first.add(voter)
        oracle[option]++
      } else ignored++
    }
    // At or after closesAt (event time): ignored.
    await publishEvent(w, vote('p1', 'late', 0, 100))
    ignored++
    await publishEvent(w, timed(storedEvent('poll.closed', { poll: 'p1' }), 101))
    await publishEvent(w, vote('p1', 'later', 1, 102))
    ignored++
    // Opening it again is refused (a dead letter), the first poll stays.
    await publishEvent(w, timed(storedEvent('poll.opened', { stream: 'tv', poll: 'p1', question: 'Again?', options: ['a', 'b'] }), 103))

    let crashes = 0
    const workers = await w.startWorker({
      hooks: {
        onBeforeAck: ({ projection }) => {
          if (projection === 'polls' && crashes < 2) {
            crashes++
            throw new Error('simulated crash before ack')
          }
        },
      },
    })
    await caughtUp(w)
    expect(crashes).toBe(2)
    const [row] = await w.database.db.select().from(polls)
    expect(row).toMatchObject({ poll: 'p1', stream: 'tv', question: 'Best level?', status: 'closed', votes: oracle, ignoredVotes: ignored })
    expect(row.closedAt?.getTime()).toBe(t0 + 100_000)
    expect((await w.database.db.select().from(pollVotes)).length).toBe(first.size)
    const dead = await w.database.db.select().from(deadLetters)
    expect(dead.map((d) => [d.projection, d.reason])).toEqual([['polls', 'poll "p1" is already opened']])

    await until('outbox drained', async () => (await w.database.db.select().from(changeOutbox)).length === 0, 15_000)
    const notices = byChannel(await readNotices(w))
    const onPoll = notices.get('poll:p1')!
    expect(onPoll.map((n) => n.version)).toEqual(onPoll.map((_, i) => i + 1))
    // Coalesced: 125 events in batches of 20 give one change per batch, the last with the final tallies.
    expect(onPoll.length).toBeLessThanOrEqual(Math.ceil(125 / 20) + 2)
    expect((onPoll.at(-1)!.data as PollChange).poll).toMatchObject({ status: 'closed', ignoredVotes: ignored, options: oracle.map((votes, i) => ({ text: ['one', 'two', 'three'][i], votes })) })
    // The stream's channel hears the poll open and close.
    const onStream = notices.get('stream:tv')!.map((n) => n.data as StreamChange & { kind: 'poll' })
    expect(onStream.map((c) => [c.kind, c.poll.poll, c.poll.status])).toEqual([
      ['poll', 'p1', 'open'],
      ['poll', 'p1', 'closed'],
    ])
    // Without live tallies: the opening is the poll's definition; the close has the final votes
    // (ignoredVotes goes on counting late votes, so it is never on the stream's channel).
    expect(onStream[0].poll).toEqual({ poll: 'p1', stream: 'tv', question: 'Best level?', status: 'open', options: [{ text: 'one' }, { text: 'two' }, { text: 'three' }], openedAt: new Date(t0 + 1000).toISOString(), closesAt: new Date(t0 + 100_000).toISOString() })
    expect(onStream[1].poll).toEqual({ ...onStream[0].poll, status: 'closed', options: oracle.map((votes, i) => ({ text: ['one', 'two', 'three'][i], votes })), closedAt: new Date(t0 + 100_000).toISOString() })
    await workers.stop()
  })
})
