import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { asc, eq } from 'drizzle-orm'
import { leaderboardEntries, leaderboards } from '../../../../core/db/schema'
import { subjects } from '../../../../core/events'
import { createHarness, type ApiHarness } from '../../../../api/src/test-support'
import { putBoardConfig } from '../../../../api/src/modules/admin/service'
import { Conflict } from '../../../../api/src/errors'
import { applyBatch, claimFence } from '../../runtime/batch'
import { storedEvent } from '../../testing/harness'
import { leaderboardsProjection } from './apply'

/**
 * The rules of a scored board are read once and then kept (see scoredRulesByDb): per database,
 * since one process may apply batches to two databases holding the same board under other rules.
 */
describe('rules of scored boards', () => {
  const worlds: { h: ApiHarness; seq: number; checkpoint: number; token: number }[] = []
  beforeAll(async () => {
    for (let i = 0; i < 2; i++) {
      const h = await createHarness({ FANFARE_PARTITIONS: '1' })
      worlds.push({ h, seq: 0, checkpoint: 0, token: await claimFence(h.database.db, 'leaderboards', 0) })
    }
  })
  afterAll(async () => {
    await Promise.all(worlds.map((w) => w.h.close()))
  })

  /** Applies scores to world `w` as its worker would, stored at `at`. */
  async function apply(w: (typeof worlds)[number], scores: { board: string; player: string; score: number }[], at: string) {
    const owner = { projection: leaderboardsProjection, partition: 0, token: w.token, partitions: 1, stream: '' }
    const messages = scores.map((s) => ({
      subject: subjects.event(w.h.env.config.FANFARE_SUBJECT_PREFIX, 0, 'score.submitted'),
      seq: ++w.seq,
      body: new TextEncoder().encode(JSON.stringify(storedEvent('score.submitted', s))),
      storedAt: new Date(at),
    }))
    w.checkpoint = (await applyBatch(w.h.database.db, owner, w.checkpoint, messages, new Date())).checkpoint
  }
  const entries = (w: (typeof worlds)[number], board: string) =>
    w.h.database.db
      .select({ period: leaderboardEntries.period, player: leaderboardEntries.player, score: leaderboardEntries.score })
      .from(leaderboardEntries)
      .where(eq(leaderboardEntries.board, board))
      .orderBy(asc(leaderboardEntries.period), asc(leaderboardEntries.player))

  test('each database keeps its own: the same board name under other rules in two databases, batches taking turns', async () => {
    const [a, b] = worlds
    await putBoardConfig(a.h.database.db, 'same', { operator: 'sum', reset: 'daily' })
    await putBoardConfig(b.h.database.db, 'same', { order: 'asc', operator: 'best' })
    // Four turns each: the first scores the board, the second reads it as scored (and keeps its
    // rules), the last two apply under the kept rules.
    for (const [i, at] of ['2030-03-01T10:00:00Z', '2030-03-01T11:00:00Z', '2030-03-01T12:00:00Z', '2030-03-02T09:00:00Z'].entries()) {
      await apply(a, [{ board: 'same', player: 'p', score: 2 }], at)
      await apply(b, [{ board: 'same', player: 'p', score: 10 - i }], at)
    }
    expect(await entries(a, 'same')).toEqual([
      { period: '2030-03-01', player: 'p', score: 6 },
      { period: '2030-03-02', player: 'p', score: 2 },
    ])
    expect(await entries(b, 'same')).toEqual([{ period: '', player: 'p', score: 7 }])
  })

  test('a board stays as its first scores found it: the admin API refuses a change once it has scores', async () => {
    const [a] = worlds
    await putBoardConfig(a.h.database.db, 'fixed', { order: 'asc' })
    await apply(a, [{ board: 'fixed', player: 'p', score: 5 }], '2030-04-01T10:00:00Z')
    await apply(a, [{ board: 'fixed', player: 'p', score: 4 }], '2030-04-01T10:00:01Z')
    await expect(putBoardConfig(a.h.database.db, 'fixed', { order: 'desc' })).rejects.toBeInstanceOf(Conflict)
    const [row] = await a.h.database.db.select().from(leaderboards).where(eq(leaderboards.board, 'fixed'))
    expect(row).toMatchObject({ sortOrder: 'asc', hasScores: true })
    await apply(a, [{ board: 'fixed', player: 'p', score: 3 }, { board: 'fixed', player: 'p', score: 9 }], '2030-04-01T10:00:02Z')
    expect(await entries(a, 'fixed')).toEqual([{ period: '', player: 'p', score: 3 }])
  })
})
