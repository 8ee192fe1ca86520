import { afterEach, describe, expect, test } from 'bun:test'
import { asc, sql } from 'drizzle-orm'
import { rowsOf } from '../../core/db/client'
import { changeHistory, channelVersions } from '../../core/db/schema'
import { createLogger } from '../../core/logger'
import { leaderboardsProjection } from '../../stream-workers/src/projections/leaderboards/apply'
import type { Projection } from '../../stream-workers/src/projections/types'
import { runRebuild } from '../../stream-workers/src/rebuild/rebuild'
import { until } from '../../core/testing/wait'
import { caughtUp, createWorld, holdHistoryLock, publishEvent, storedEvent, type World } from '../../stream-workers/src/testing/harness'

let world: World | undefined
afterEach(async () => {
  await world?.close()
  world = undefined
})

/** Leaderboards as fixed after the fact: board z's scores are refused (the live code let them through). */
const fixed: Projection = {
  ...leaderboardsProjection,
  apply: async (db, events) => {
    const bad = events.filter((e) => e.event.type === 'score.submitted' && e.event.data.board === 'z')
    const applied = await leaderboardsProjection.apply(db, events.filter((e) => !bad.includes(e)))
    return { ...applied, refused: [...(applied.refused ?? []), ...bad.map((e) => ({ seq: e.seq, reason: 'board z is refused now' }))] }
  },
}

/**
 * A rebuild's switch ends the history of every channel of its projection: one the rebuilt model
 * never changed loses its version row, the others continue under a new epoch. Their runs in
 * change_history (live batches) can no longer be served, and the switch deletes them itself; the
 * pruner's rounds (here: none) never reached a dropped channel's runs but in its hourly full round.
 */
describe('change_history across a rebuild', () => {
  /**
   * Boards b and z and room lobby changed by a worker that never prunes during the test (its
   * first round comes after the interval), every channel with runs in change_history; and the
   * rebuild of leaderboards by the fixed code, not started.
   */
  async function seeded() {
    const w = (world = await createWorld({ FANFARE_PARTITIONS: '2' }))
    await w.startWorker({ historyPruneMs: 3_600_000 })
    for (const [board, player, score] of [['b', 'ann', 5], ['b', 'cy', 4], ['z', 'zed', 9], ['z', 'zoe', 3]] as const) {
      await publishEvent(w, storedEvent('score.submitted', { board, player, score }))
    }
    for (const text of ['hi', 'there']) await publishEvent(w, storedEvent('chat.message.posted', { room: 'lobby', user: 'ann', text }))
    await caughtUp(w)
    const db = w.database.db
    const history = async () =>
      (await db.select().from(changeHistory).orderBy(asc(changeHistory.channel), asc(changeHistory.epoch), asc(changeHistory.version))).map((r) => `${r.channel}/${r.epoch}@${r.version}`)
    const epochs = async () => Object.fromEntries((await db.select().from(channelVersions)).map((v) => [v.channel, v.epoch]))
    const kept = await history()
    const of = (rows: string[], channel: string) => rows.filter((r) => r.startsWith(`${channel}/`))
    for (const channel of ['leaderboard:b', 'leaderboard:z', 'chat:lobby']) expect(of(kept, channel).length).toBeGreaterThan(0)
    const rebuild = () =>
      runRebuild(
        { config: w.config, db, js: w.js, logger: createLogger('silent'), projection: fixed, progress: async () => {}, signal: new AbortController().signal },
        { id: 'history', attempt: 1 },
      )
    return { w, db, history, epochs, kept, of, rebuild }
  }

  test("the switch deletes its projection's channels' runs, a dropped channel's and a kept one's old epoch, and leaves other projections' channels alone", async () => {
    const { w, history, epochs, kept, of, rebuild } = await seeded()
    const before = await epochs()
    await rebuild()

    // z dropped (no scores left), b kept under a new epoch, chat untouched.
    const after = await epochs()
    expect(after['leaderboard:z']).toBeUndefined()
    expect(after['leaderboard:b']).not.toBe(before['leaderboard:b'])
    expect(after['chat:lobby']).toBe(before['chat:lobby'])
    // Right after the switch, no pruner round: only the other projection's runs are left.
    expect(await history()).toEqual(of(kept, 'chat:lobby'))

    // b's history starts again in its new epoch with its next change.
    await publishEvent(w, storedEvent('score.submitted', { board: 'b', player: 'dan', score: 7 }))
    await caughtUp(w)
    expect((await history()).filter((r) => !r.startsWith('chat:'))).toEqual([`leaderboard:b/${after['leaderboard:b']}@3`])
  }, 60_000)

  test('the switch waits for a prune round under way (their deletes hold one advisory lock) before it locks the live tables, then deletes', async () => {
    const { w, db, history, kept, of, rebuild } = await seeded()
    // Another session holds the lock as a prune round does.
    const lock = await holdHistoryLock(w)
    try {
      let switched = false
      const rebuilding = rebuild().then(() => (switched = true))
      const waiting = async () => (await rowsOf<{ n: number }>(db, sql`select count(*)::int as n from pg_locks l join pg_database d on d.oid = l.database
                                                 where d.datname = current_database() and l.locktype = 'advisory' and not l.granted`))[0].n === 1
      await until('the switch waiting for the lock', waiting, 20_000, 20)
      expect(switched).toBe(false)
      expect(await history()).toEqual(kept)
      // Waiting, the switch holds no lock of the live tables yet: reads of the model go on.
      const [read] = await db.transaction(async (tx) => {
        await tx.execute(sql`set local lock_timeout = '2s'`)
        return rowsOf<{ n: number }>(tx, sql`select count(*)::int as n from public.leaderboard_entries`)
      })
      expect(read.n).toBe(4)
      await lock.release()
      await rebuilding
    } finally {
      await lock.release()
    }
    expect(await history()).toEqual(of(kept, 'chat:lobby'))
  }, 60_000)
})
