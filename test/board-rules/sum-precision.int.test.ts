import { afterEach, describe, expect, test } from 'bun:test'
import { asc, eq } from 'drizzle-orm'
import { createHarness, type ApiHarness } from '../../api/src/test-support'
import { deadLetters, leaderboardEntries } from '../../core/db/schema'
import { startTestWorker, untilCaughtUp } from '../../stream-workers/src/testing/harness'

let h: ApiHarness | undefined
const closers: (() => Promise<void>)[] = []
afterEach(async () => {
  for (const close of closers.splice(0)) await close().catch(() => {})
  await h?.close()
  h = undefined
})

// A sum board's totals are float8 in Postgres and numbers in JS: exact up to 2^53 - 1 only. Past
// it, small increments would be silently lost, so an increment that would take a total past it is
// a dead letter that says so, and every total shown is exact.
describe('sum boards stay exact', () => {
  test('an increment that would take a total past Number.MAX_SAFE_INTEGER is a dead letter naming the limit; the total stays exact and later increments that fit apply', async () => {
    const hh = (h = await createHarness({ FANFARE_PARTITIONS: '1' }))
    const worker = await startTestWorker(hh.env)
    closers.push(() => worker.stop())
    expect((await hh.call('PUT', '/admin/leaderboards/coins', { token: hh.adminToken, body: { operator: 'sum' } })).status).toBe(200)
    const send = async (player: string, scores: number[]) => {
      const r = await hh.call('POST', '/v1/events', { token: hh.ingestToken, body: { events: scores.map((score) => ({ type: 'score.submitted', data: { board: 'coins', player, score } })) } })
      expect(r.status).toBe(202)
    }
    // 9e15, then 1e15 more would be 1e16 > 2^53 - 1 (about 9.007e15); +1 and -1e15 still fit.
    await send('whale', [...Array(9).fill(1e15), 1e15, 1, 1e15, -1e15, 2])
    await send('minnow', [...Array(9).fill(-1e15), -1e15, 1])
    await untilCaughtUp({ config: hh.env.config, db: hh.database.db, nc: hh.nc })
    const rows = await hh.database.db.select().from(leaderboardEntries).where(eq(leaderboardEntries.board, 'coins')).orderBy(asc(leaderboardEntries.player))
    expect(rows.map((r) => [r.player, r.score])).toEqual([
      ['minnow', -9e15 + 1],
      ['whale', 8e15 + 3],
    ])
    const board = (await hh.call('GET', '/v1/leaderboards/coins')).json
    expect(board.entries.map((e: { player: string; score: number }) => [e.player, e.score])).toEqual([
      ['whale', 8000000000000003],
      ['minnow', -8999999999999999],
    ])
    const letters = await hh.database.db.select().from(deadLetters).orderBy(asc(deadLetters.streamSeq))
    expect(letters.map((l) => l.reason)).toEqual([
      "sum board coins: whale's total 9000000000000000 + 1000000000000000 would pass 9007199254740991 (Number.MAX_SAFE_INTEGER), beyond which totals lose increments",
      "sum board coins: whale's total 9000000000000001 + 1000000000000000 would pass 9007199254740991 (Number.MAX_SAFE_INTEGER), beyond which totals lose increments",
      "sum board coins: minnow's total -9000000000000000 + -1000000000000000 would pass -9007199254740991 (-Number.MAX_SAFE_INTEGER), beyond which totals lose increments",
    ])
  }, 60_000)
})
