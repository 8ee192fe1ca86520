import { afterAll, beforeAll, expect, test } from 'bun:test'
import { sql, TransactionRollbackError } from 'drizzle-orm'
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
  // `period` filter-only, as the leaderboards projection reads: compared plainly, the key ties with
  // the rank indexes on (board, period) and which wins depends on index sizes (the next test).
  const lookup = lookupByKey(leaderboardEntries, ['board', 'player', 'period'], keys, ['period'])
  const [plan] = await rowsOf<{ 'QUERY PLAN': unknown }>(database.db, sql`explain (format json) ${lookup}`)
  const text = JSON.stringify(plan['QUERY PLAN'])
  expect(text).not.toContain('Seq Scan')
  expect(text).toContain('"Index Name":"leaderboard_entries_board_player_period_pk"')
  // And it finds exactly the rows that exist.
  const rows = await rowsOf<{ board: string; player: string }>(database.db, lookup)
  expect(rows.length).toBe(100)
})

test('lookupByKey with filterOnly: the key beats a secondary index sharing key columns by cost, not by a tie', async () => {
  // What a worker's prepared statement plans once and keeps: a small table and no statistics (the
  // estimates do not depend on the keys, so its generic plan costs the same as this one).
  // leaderboard_entries_rank (board, period, ...) matches board and period of the
  // key (board, player, period); compared plainly, both indexes are estimated at one row and their
  // costs tie, and which one wins depends on their sizes. The cost of the secondary index's path is
  // read with the key dropped inside a transaction that is rolled back.
  await database.db.execute(sql`truncate leaderboard_entries`)
  await database.db.execute(sql`insert into leaderboard_entries (board, player, score, reached_seq)
    select 'b' || (i % 8), 'p' || i, i, i from generate_series(1, 2000) i`)
  const keys = Array.from({ length: 50 }, (_, i) => ({ board: `b${(i + 1) % 8}`, period: '', player: `p${i + 1}` }))
  const costs = async (filterOnly: string[]) => {
    const lookup = lookupByKey(leaderboardEntries, ['board', 'player', 'period'], keys, filterOnly)
    const inner = async (q: typeof database.db) => {
      const [plan] = await rowsOf<{ 'QUERY PLAN': { Plan: { Plans: { Plans: { 'Index Name'?: string; 'Total Cost': number }[] }[] } }[] }>(q, sql`explain (format json) ${lookup}`)
      return plan['QUERY PLAN'][0].Plan.Plans[1].Plans[0]
    }
    const key = await inner(database.db)
    let secondary: Awaited<ReturnType<typeof inner>> | undefined
    await database.db
      .transaction(async (tx) => {
        await tx.execute(sql`alter table leaderboard_entries drop constraint leaderboard_entries_board_player_period_pk`)
        // The secondary index's path, not a scan of the table.
        await tx.execute(sql`set local enable_seqscan = off`)
        await tx.execute(sql`set local enable_bitmapscan = off`)
        secondary = await inner(tx as unknown as typeof database.db)
        tx.rollback()
      })
      .catch((err) => {
        if (!(err instanceof TransactionRollbackError)) throw err
      })
    return { key, secondary: secondary! }
  }
  const plain = await costs([])
  const period = await costs(['period'])
  expect(period.key['Index Name']).toBe('leaderboard_entries_board_player_period_pk')
  expect(period.secondary['Index Name']).toBe('leaderboard_entries_rank')
  // Beyond the planner's 1% fuzz: the key wins whatever the index sizes.
  expect(period.secondary['Total Cost']).toBeGreaterThan(period.key['Total Cost'] * 1.05)
  // Compared plainly it is a tie (what lost, now and then, in the workers).
  expect(plain.secondary['Total Cost']).toBeLessThanOrEqual(plain.key['Total Cost'] * 1.01)
  // And it still finds exactly the rows that exist.
  const rows = await rowsOf(database.db, lookupByKey(leaderboardEntries, ['board', 'player', 'period'], keys, ['period']))
  expect(rows.length).toBe(50)
})
