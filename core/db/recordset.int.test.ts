import { afterAll, beforeAll, expect, test } from 'bun:test'
import { sql } from 'drizzle-orm'
import { createTestEnv, type TestEnv } from '../testing/env'
import { connectBunSql, rowsOf, type Database } from './client'
import { lookupByKey } from './recordset'
import { leaderboardEntries } from './schema'

let env: TestEnv
let database: Database
beforeAll(async () => {
  env = await createTestEnv()
  database = await connectBunSql(env.vars.DATABASE_URL, { max: 1 })
})
afterAll(async () => {
  await database.close()
  await env.cleanup()
})

test('lookupByKey probes the primary key per key, even when the statistics predate the rows', async () => {
  // A burst of inserts into a table that was never analyzed: what the workers see in the first
  // minute of traffic, before autovacuum's analyze. A plain join was planned as a sequential scan.
  await database.db.execute(sql`insert into leaderboard_entries (board, player, score, reached_seq)
    select 'b' || (i % 8), 'p' || i, i, i from generate_series(1, 20000) i`)
  // 100 keys that exist (player p<n> is on board b<n % 8>) and 10 that do not.
  const keys = [
    ...Array.from({ length: 100 }, (_, i) => ({ board: `b${((i + 1) * 7) % 8}`, period: '', player: `p${(i + 1) * 7}` })),
    ...Array.from({ length: 10 }, (_, i) => ({ board: 'b0', period: '', player: `missing${i}` })),
  ]
  const lookup = lookupByKey(leaderboardEntries, ['board', 'player', 'period'], keys)
  const [plan] = await rowsOf<{ 'QUERY PLAN': unknown }>(database.db, sql`explain (format json) ${lookup}`)
  const text = JSON.stringify(plan['QUERY PLAN'])
  expect(text).not.toContain('Seq Scan')
  expect(text).toContain('"Index Name":"leaderboard_entries_board_player_period_pk"')
  // And it finds exactly the rows that exist.
  const rows = await rowsOf<{ board: string; player: string }>(database.db, lookup)
  expect(rows.length).toBe(100)
})
