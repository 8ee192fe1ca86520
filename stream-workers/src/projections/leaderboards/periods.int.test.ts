import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { and, asc, eq } from 'drizzle-orm'
import { leaderboardEntries, leaderboards } from '../../../../core/db/schema'
import { subjects } from '../../../../core/events'
import { periodKey, previousKey } from '../../../../core/periods'
import { createHarness, type ApiHarness } from '../../../../api/src/test-support'
import { leaderboardSnapshot } from '../../../../api/src/modules/leaderboards/service'
import { applyBatch, claimFence } from '../../runtime/batch'
import { storedEvent } from '../../testing/harness'
import { leaderboardsProjection } from './apply'

/**
 * Leaderboard periods against the real Postgres: a score counts in the period of its event time
 * (the stored time the batch is given, as JetStream's), and reads choose a period.
 */
describe('leaderboard periods', () => {
  let h: ApiHarness
  let seq = 0
  let checkpoint = 0
  let token = 0
  beforeAll(async () => {
    h = await createHarness({ FANFARE_PARTITIONS: '1' })
    token = await claimFence(h.database.db, 'leaderboards', 0)
  })
  afterAll(async () => {
    await h.close()
  })

  /** Applies scores as the worker would, each with the stored time given. */
  async function apply(scores: { board: string; player: string; score: number; at: string | number; by?: string; eventAt?: string; id?: string }[]) {
    const owner = { projection: leaderboardsProjection, partition: 0, token, partitions: 1, stream: '' }
    const messages = scores.map((s) => ({
      subject: subjects.event(h.env.config.FANFARE_SUBJECT_PREFIX, 0, 'score.submitted'),
      seq: ++seq,
      body: new TextEncoder().encode(
        JSON.stringify({ ...storedEvent('score.submitted', { board: s.board, player: s.player, score: s.score }, s.id, s.by), ...(s.eventAt ? { at: s.eventAt } : {}) }),
      ),
      storedAt: new Date(s.at),
    }))
    checkpoint = (await applyBatch(h.database.db, owner, checkpoint, messages, new Date())).checkpoint
  }
  const entries = (board: string) =>
    h.database.db
      .select({ period: leaderboardEntries.period, player: leaderboardEntries.player, score: leaderboardEntries.score })
      .from(leaderboardEntries)
      .where(eq(leaderboardEntries.board, board))
      .orderBy(asc(leaderboardEntries.period), asc(leaderboardEntries.player))

  test("a match's result counts in the period of the finish (its `at`), even when stored the next day; anyone else's `at` is not trusted", async () => {
    await h.database.db.insert(leaderboards).values({ board: 'mr', reset: 'daily' })
    const finish = '2030-01-01T23:59:59.500Z'
    const storedNextDay = '2030-01-02T00:00:01.000Z'
    await apply([
      { board: 'mr', player: 'winner', score: 5, at: storedNextDay, by: 'matches', eventAt: finish },
      { board: 'mr', player: 'cheat', score: 5, at: storedNextDay, by: 'ingest', eventAt: finish },
    ])
    expect(await entries('mr')).toEqual([
      { period: '2030-01-01', player: 'winner', score: 5 },
      { period: '2030-01-02', player: 'cheat', score: 5 },
    ])
  })

  test("a match's result published again after the de-duplication window (a second stored copy) counts once", async () => {
    await h.database.db.insert(leaderboards).values({ board: 'ms', operator: 'sum' })
    const result = { board: 'ms', player: 'p', score: 7, at: '2030-02-01T10:00:00Z', by: 'matches', id: 'result.m9.0' }
    await apply([result, { ...result, at: '2030-02-01T10:00:01Z' }])
    await apply([{ ...result, at: '2030-02-01T10:05:00Z' }, { ...result, id: 'result.m9.1', player: 'q' }])
    // The same id from another publisher is another event.
    await apply([{ ...result, by: 'ingest' }])
    expect(await entries('ms')).toEqual([
      { period: '', player: 'p', score: 14 },
      { period: '', player: 'q', score: 7 },
    ])
  })

  test("a match's result refused by a sum board's bound is not counted as applied: delivered again once the total has room (a dead letter's replay), it applies", async () => {
    await h.database.db.insert(leaderboards).values({ board: 'mb', operator: 'sum' })
    const at = '2030-03-01T10:00:00Z'
    // Scores are at most 1e15 each: nine make 9e15.
    await apply(Array.from({ length: 9 }, () => ({ board: 'mb', player: 'p', score: 1e15, at })))
    const result = { board: 'mb', player: 'p', score: 1e15, at, by: 'matches', id: 'result.m10.0' }
    // 9e15 + 1e15 is past Number.MAX_SAFE_INTEGER: refused (a dead letter).
    await apply([result])
    expect(await entries('mb')).toEqual([{ period: '', player: 'p', score: 9e15 }])
    await apply(Array.from({ length: 5 }, () => ({ board: 'mb', player: 'p', score: -1e15, at })))
    await apply([result])
    expect(await entries('mb')).toEqual([{ period: '', player: 'p', score: 5e15 }])
  })

  test('a score counts in the day, ISO week or month of its stored time; a board without periods keeps one', async () => {
    for (const [board, reset] of [['d', 'daily'], ['w', 'weekly'], ['m', 'monthly']] as const) {
      await h.database.db.insert(leaderboards).values({ board, reset })
    }
    const scores = (board: string) => [
      { board, player: 'ann', score: 10, at: '2026-11-29T23:59:59.999Z' }, // a Sunday
      { board, player: 'ann', score: 7, at: '2026-11-30T00:00:00.000Z' }, // Monday: a new day and week
      { board, player: 'ann', score: 5, at: '2026-12-01T00:00:00.000Z' }, // a new month
    ]
    await apply([...scores('d'), ...scores('w'), ...scores('m'), ...scores('forever')])
    expect(await entries('d')).toEqual([
      { period: '2026-11-29', player: 'ann', score: 10 },
      { period: '2026-11-30', player: 'ann', score: 7 },
      { period: '2026-12-01', player: 'ann', score: 5 },
    ])
    expect(await entries('w')).toEqual([
      { period: '2026-W48', player: 'ann', score: 10 },
      { period: '2026-W49', player: 'ann', score: 7 },
    ])
    expect(await entries('m')).toEqual([
      { period: '2026-11', player: 'ann', score: 10 },
      { period: '2026-12', player: 'ann', score: 5 },
    ])
    expect(await entries('forever')).toEqual([{ period: '', player: 'ann', score: 10 }])
  })

  test('reads choose the period: current (the default), previous, or a key; the answer names it; bad periods are 422', async () => {
    const now = Date.now()
    await h.database.db.insert(leaderboards).values({ board: 'today', reset: 'daily' })
    await apply([
      { board: 'today', player: 'old', score: 3, at: now - 86_400_000 },
      { board: 'today', player: 'new', score: 1, at: now },
      { board: 'today', player: 'new2', score: 2, at: now },
    ])
    const current = periodKey('daily', now)
    const previous = previousKey('daily', now)
    const page = await h.call('GET', '/v1/leaderboards/today')
    expect(page.json).toMatchObject({ reset: 'daily', period: current, entries: [{ rank: 1, player: 'new2' }, { rank: 2, player: 'new' }] })
    expect((await h.call('GET', '/v1/leaderboards/today?period=previous')).json).toMatchObject({ period: previous, entries: [{ rank: 1, player: 'old', score: 3 }] })
    expect((await h.call('GET', `/v1/leaderboards/today?period=${previous}`)).json.entries.map((e: any) => e.player)).toEqual(['old'])
    // A cursor continues its own period.
    const first = await h.call('GET', '/v1/leaderboards/today?limit=1')
    const second = await h.call('GET', `/v1/leaderboards/today?limit=1&after=${first.json.next}`)
    expect(second.json).toMatchObject({ period: current, entries: [{ rank: 2, player: 'new' }] })
    // The player route too.
    expect((await h.call('GET', '/v1/leaderboards/today/players/new?period=current')).json).toMatchObject({ period: current, rank: 2 })
    expect((await h.call('GET', '/v1/leaderboards/today/players/old')).status).toBe(404)
    expect((await h.call('GET', '/v1/leaderboards/today/players/old?period=previous')).json).toMatchObject({ period: previous, rank: 1 })
    for (const bad of ['yesterday', '2026-02-30', '2026-W48', '2026-11']) {
      const r = await h.call('GET', `/v1/leaderboards/today?period=${bad}`)
      expect([bad, r.status, r.json.error.details[0].path]).toEqual([bad, 422, '/period'])
    }
    expect((await h.call('GET', '/v1/leaderboards/forever?period=previous')).status).toBe(422)
  })

  test('period keys are checked alike under every reset: years 0001-9999 are real (200, named as asked), year 0000 is 422', async () => {
    await h.database.db.insert(leaderboards).values([
      { board: 'eraD', reset: 'daily' },
      { board: 'eraW', reset: 'weekly' },
      { board: 'eraM', reset: 'monthly' },
    ])
    const cases: [string, string, number][] = [
      ['eraD', '0001-01-01', 200],
      ['eraD', '0099-12-31', 200],
      ['eraD', '0000-12-31', 422],
      ['eraW', '0001-W01', 200],
      ['eraW', '0050-W10', 200],
      ['eraW', '0000-W52', 422],
      ['eraM', '0001-01', 200],
      ['eraM', '0000-12', 422],
      ['eraM', '9999-12', 200],
    ]
    for (const [board, period, status] of cases) {
      const r = await h.call('GET', `/v1/leaderboards/${board}?period=${period}`)
      expect([board, period, r.status, r.status === 200 ? r.json.period : r.json.error.details[0].path]).toEqual([board, period, status, status === 200 ? period : '/period'])
    }
  })

  test("a snapshot is the current period's, named, and says until when it is current", async () => {
    const now = Date.now()
    const snap = await leaderboardSnapshot(h.database.db, 'today', now)
    expect(snap.data).toMatchObject({ period: periodKey('daily', now), reset: 'daily' })
    expect(snap.until).toBe(Math.floor(now / 86_400_000 + 1) * 86_400_000)
    expect((await leaderboardSnapshot(h.database.db, 'forever', now)).until).toBeUndefined()
  })

  test('closed periods stay readable; rules (reset included) cannot change once a board has scores', async () => {
    expect((await h.call('GET', '/v1/leaderboards/d?period=2026-11-29')).json.entries).toEqual([{ rank: 1, player: 'ann', score: 10 }])
    const change = await h.call('PUT', '/admin/leaderboards/d', { token: h.adminToken, body: { reset: 'weekly' } })
    expect([change.status, change.json.error.code]).toEqual([409, 'board_has_scores'])
    const [row] = await h.database.db.select().from(leaderboards).where(and(eq(leaderboards.board, 'd')))
    expect(row.reset).toBe('daily')
  })
})
