import { afterEach, describe, expect, test } from 'bun:test'
import { changeOutbox, deadLetters, reactionDedup, reactionTotals } from '../../../../core/db/schema'
import { keyOf, partitionOf, subjects, type StoredEvent } from '../../../../core/events'
import { until } from '../../../../core/testing/wait'
import { claimFence, applyBatch, type BatchMessage } from '../../runtime/batch'
import { byChannel, caughtUp, createWorld, publishEvent, readNotices, storedEvent, type World } from '../../testing/harness'
import { reactionsProjection } from './apply'

let world: World | undefined
afterEach(async () => {
  await world?.close()
  world = undefined
})

const react = (stream: string, emoji: string, by = 'u:viewer') => storedEvent('reaction.sent', { stream, emoji }, undefined, by)

const totals = async (w: World) => {
  const out: Record<string, Record<string, number>> = {}
  for (const r of await w.database.db.select().from(reactionTotals)) (out[r.stream] ??= {})[r.emoji] = r.count
  return out
}

/** Messages as the runner hands them to applyBatch, numbered from `first`, stored at `storedAt`. */
const messagesOf = (w: World, events: StoredEvent[], first: number, storedAt = new Date()): BatchMessage[] =>
  events.map((e, i) => ({
    subject: subjects.event(w.config.FANFARE_SUBJECT_PREFIX, 0, e.type),
    seq: first + i,
    body: new TextEncoder().encode(JSON.stringify(e)),
    storedAt,
  }))

/** A `reaction.batched` as an API node stores it: reactions [by, id, emoji] of one stream. */
const batched = (stream: string, reactions: [string, string, string][], dedupWindowMs = 60_000) =>
  storedEvent('reaction.batched', { stream, dedupWindowMs, reactions: reactions.map(([by, id, emoji]) => ({ by, id, emoji })) }, undefined, 'system')

describe('reactions projection', () => {
  test('a batch writes each touched total once and announces ONE change per stream: its counts and the totals after it', async () => {
    const w = (world = await createWorld({ FANFARE_PARTITIONS: '1' }))
    const token = await claimFence(w.database.db, 'reactions', 0)
    const owner = { projection: reactionsProjection, partition: 0, token, partitions: 1, stream: '' }
    const first = [react('main', '👏'), react('main', '❤️'), react('side', '👏'), react('main', '👏'), react('main', '👏')]
    const r1 = await applyBatch(w.database.db, owner, 0, messagesOf(w, first, 1), new Date())
    expect(r1.applied).toBe(5)
    expect(r1.runs.map((r) => [r.channel, r.version, JSON.parse(r.body).changes])).toEqual([
      ['reactions:main', 1, [{ counts: { '👏': 3, '❤️': 1 }, totals: { '👏': 3, '❤️': 1 } }]],
      ['reactions:side', 1, [{ counts: { '👏': 1 }, totals: { '👏': 1 } }]],
    ])
    // The next batch counts on from the stored totals; emojis it does not touch are not announced.
    const second = [react('main', '❤️'), react('main', '🔥')]
    const r2 = await applyBatch(w.database.db, owner, 5, messagesOf(w, second, 6), new Date())
    expect(r2.runs.map((r) => [r.channel, r.version, JSON.parse(r.body).changes])).toEqual([
      ['reactions:main', 2, [{ counts: { '❤️': 1, '🔥': 1 }, totals: { '❤️': 2, '🔥': 1 } }]],
    ])
    expect(await totals(w)).toEqual({ main: { '👏': 3, '❤️': 2, '🔥': 1 }, side: { '👏': 1 } })

    // The first batch again, by an owner that missed the second (a stale read of the totals): the
    // guard refuses it and nothing is added, although its totals were computed from fresh reads.
    await expect(applyBatch(w.database.db, owner, 0, messagesOf(w, first, 1), new Date())).rejects.toThrow(/checkpoint is at/)
    // Redelivered to the owner that applied it: skipped.
    expect(await applyBatch(w.database.db, owner, 7, messagesOf(w, [...first, ...second], 1), new Date())).toMatchObject({ applied: 0, skipped: 7, runs: [] })
    expect(await totals(w)).toEqual({ main: { '👏': 3, '❤️': 2, '🔥': 1 }, side: { '👏': 1 } })
  })

  test('batched reactions count once per (stream, by, id) within the window, by stored time: in one message, across messages, and against a reaction stored alone', async () => {
    const w = (world = await createWorld({ FANFARE_PARTITIONS: '1' }))
    const token = await claimFence(w.database.db, 'reactions', 0)
    const owner = { projection: reactionsProjection, partition: 0, token, partitions: 1, stream: '' }
    const t0 = Date.parse('2026-01-01T00:00:00Z')
    const at = (s: number) => new Date(t0 + s * 1000)
    const changesOf = (r: { runs: { body: string }[] }) => r.runs.map((run) => JSON.parse(run.body).changes)

    // ann's r1 twice in one message (a resend that caught up with the first on the same node);
    // bob's r1 is another publisher's id: another reaction. cy's r9 was stored as its own message.
    const r1 = await applyBatch(w.database.db, owner, 0, [
      ...messagesOf(w, [storedEvent('reaction.sent', { stream: 'main', emoji: '🔥' }, 'r9', 'u:cy')], 1, at(0)),
      ...messagesOf(w, [batched('main', [['u:ann', 'r1', '👏'], ['u:bob', 'r1', '👏'], ['u:ann', 'r1', '👏']])], 2, at(1)),
    ], at(1))
    expect(changesOf(r1)).toEqual([[{ counts: { '🔥': 1, '👏': 2 }, totals: { '🔥': 1, '👏': 2 } }]])
    // 10 s later, inside the 60 s window: ann's r1 and cy's r9 again are resends; ann's r2 is new.
    const r2 = await applyBatch(w.database.db, owner, 2, messagesOf(w, [batched('main', [['u:ann', 'r1', '👏'], ['u:cy', 'r9', '🔥'], ['u:ann', 'r2', '❤️']])], 3, at(11)), at(11))
    expect(changesOf(r2)).toEqual([[{ counts: { '❤️': 1 }, totals: { '❤️': 1 } }]])
    // A batch of resends only changes nothing: no change announced.
    const r3 = await applyBatch(w.database.db, owner, 3, messagesOf(w, [batched('main', [['u:bob', 'r1', '👏']])], 4, at(30)), at(30))
    expect(r3.runs).toEqual([])
    expect(await totals(w)).toEqual({ main: { '🔥': 1, '👏': 2, '❤️': 1 } })

    // Past the window (120 s after it was counted), ann's r1 is a new reaction, as for JetStream.
    const r4 = await applyBatch(w.database.db, owner, 4, messagesOf(w, [batched('main', [['u:ann', 'r1', '👏'], ['u:dee', 'r5', '👏']])], 5, at(121)), at(121))
    expect(changesOf(r4)).toEqual([[{ counts: { '👏': 2 }, totals: { '👏': 4 } }]])
    expect(await totals(w)).toEqual({ main: { '🔥': 1, '👏': 4, '❤️': 1 } })
    // What no later reaction can repeat (counted before 121 s - 60 s) is forgotten; ann's r1 is
    // remembered from its new count.
    const remembered = (await w.database.db.select().from(reactionDedup)).map((r) => `${r.by}/${r.id}@${(r.storedAt.getTime() - t0) / 1000}`).sort()
    expect(remembered).toEqual(['u:ann/r1@121', 'u:dee/r5@121'])
  })

  test('through a worker: batches redelivered after their commit, and a resent event id, count once; an invalid emoji in the stream is a dead letter', async () => {
    const w = (world = await createWorld())
    let crashes = 0
    const workers = await w.startWorker({
      hooks: {
        onBeforeAck: ({ projection }) => {
          if (projection === 'reactions' && crashes < 2) {
            crashes++
            throw new Error('simulated crash before ack')
          }
        },
      },
    })
    const expected: Record<string, Record<string, number>> = {}
    const emojis = ['👏', '❤️', '🔥', '🇫🇷', '1️⃣', '👍🏽', '👩‍👩‍👧']
    for (let i = 0; i < 60; i++) {
      const stream = `s${i % 3}`
      const emoji = emojis[i % emojis.length]
      const e = react(stream, emoji, `u:viewer-${i % 5}`)
      await publishEvent(w, e)
      // The same publisher resending the same id (a lost ack): JetStream keeps one.
      if (i % 10 === 0) expect((await publishEvent(w, e)).duplicate).toBe(true)
      const t = (expected[stream] ??= {})
      t[emoji] = (t[emoji] ?? 0) + 1
    }
    // Written past the API (which refuses it with 422): the worker must not count it.
    const bad = react('s0', '👍👍')
    const p = partitionOf(keyOf(bad), w.config.FANFARE_PARTITIONS)
    await w.js.publish(subjects.event(w.config.FANFARE_SUBJECT_PREFIX, p, bad.type), JSON.stringify(bad))
    await caughtUp(w)
    expect(crashes).toBe(2)
    expect(await totals(w)).toEqual(expected)
    const dead = await w.database.db.select().from(deadLetters)
    expect(dead.map((d) => [d.projection, d.eventId])).toEqual([['reactions', bad.id]])
    expect(dead[0].reason).toContain('must be one emoji')

    // Each channel's changes, in version order, add up to its totals: none lost, none twice. (The
    // runs of the "crashed" batches are published by the outbox sweeper.)
    await until('the outbox to be empty', async () => (await w.database.db.select().from(changeOutbox)).length === 0, 20_000, 50)
    const notices = byChannel(await readNotices(w))
    for (const [stream, t] of Object.entries(expected)) {
      const list = notices.get(`reactions:${stream}`) ?? []
      expect(list.map((n) => n.version)).toEqual(list.map((_, i) => i + 1))
      const summed: Record<string, number> = {}
      const last: Record<string, number> = {}
      for (const n of list) {
        const { counts, totals } = n.data as { counts: Record<string, number>; totals: Record<string, number> }
        for (const [emoji, c] of Object.entries(counts)) summed[emoji] = (summed[emoji] ?? 0) + c
        Object.assign(last, totals)
      }
      expect(summed).toEqual(t)
      expect(last).toEqual(t)
    }
    await workers.stop()
  })
})
