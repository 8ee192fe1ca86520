import { expect, test } from 'bun:test'
import postgres from 'postgres'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { noticesOf, type ChangeRun } from '../channels'
import { TEST_PG_URL } from '../testing/env'
import { migrationsFolder } from './client'

/** Runs one migration file the way drizzle's migrator does: statement by statement. */
async function apply(sql: postgres.Sql, tag: string) {
  const text = readFileSync(join(migrationsFolder, `${tag}.sql`), 'utf8')
  for (const statement of text.split('--> statement-breakpoint')) if (statement.trim()) await sql.unsafe(statement)
}

/** Runs `body` against a throwaway database, dropped afterwards. */
async function withDatabase(body: (sql: postgres.Sql) => Promise<void>) {
  const name = `fanfare_m_${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`
  const admin = postgres(TEST_PG_URL, { max: 1, onnotice: () => {} })
  await admin.unsafe(`CREATE DATABASE ${name}`)
  const url = new URL(TEST_PG_URL)
  url.pathname = `/${name}`
  const sql = postgres(url.toString(), { max: 1, onnotice: () => {} })
  try {
    await body(sql)
  } finally {
    await sql.end()
    await admin.unsafe(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
    await admin.end()
  }
}

test('0002_change_runs turns outbox notices left by older workers into runs of one', () =>
  withDatabase(async (sql) => {
    await apply(sql, '0000_init')
    await apply(sql, '0001_channel_epoch')
    const old = { channel: 'leaderboard:arena', version: 7, epoch: 'e1', data: { player: 'p', score: 3, previous: null }, at: '2026-11-25T10:00:00.000Z' }
    await sql`insert into change_outbox (channel, version, payload) values (${old.channel}, ${old.version}, ${sql.json(old)})`
    await apply(sql, '0002_change_runs')
    const [row] = await sql`select channel, version, epoch, payload from change_outbox`
    expect(row.epoch).toBe('e1')
    expect(typeof row.payload).toBe('string')
    const run = JSON.parse(row.payload) as ChangeRun
    expect(noticesOf(run)).toEqual([old])
  }))

test('0004_board_guard fixes the rules of boards that already have scores, configured or not', () =>
  withDatabase(async (sql) => {
    for (const tag of ['0000_init', '0001_channel_epoch', '0002_change_runs', '0003_checkpoint_stream']) await apply(sql, tag)
    await sql`insert into leaderboards (board, sort_order, operator) values ('set-scored', 'asc', 'sum'), ('set-empty', 'asc', 'best')`
    await sql`insert into leaderboard_entries (board, player, score, reached_seq) values ('set-scored', 'a', 1, 1), ('unset-scored', 'b', 2, 2), ('unset-scored', 'c', 3, 3)`
    await apply(sql, '0004_board_guard')
    const rows = await sql`select board, sort_order, operator, has_scores, configured from leaderboards order by board`
    expect(rows.map((r) => ({ ...r }))).toEqual([
      { board: 'set-empty', sort_order: 'asc', operator: 'best', has_scores: false, configured: true },
      { board: 'set-scored', sort_order: 'asc', operator: 'sum', has_scores: true, configured: true },
      { board: 'unset-scored', sort_order: 'desc', operator: 'best', has_scores: true, configured: false },
    ])
  }))

test('0006_chat_per_room keeps the messages and lets two rooms hold the same id', () =>
  withDatabase(async (sql) => {
    for (const tag of ['0000_init', '0001_channel_epoch', '0002_change_runs', '0003_checkpoint_stream', '0004_board_guard', '0005_lost_stream']) await apply(sql, tag)
    await sql`insert into chat_messages (id, room, user_id, text, seq, posted_at) values ('m1', 'red', 'ann', 'hi', 1, now())`
    await apply(sql, '0006_chat_per_room')
    await sql`insert into chat_messages (id, room, user_id, text, seq, posted_at, posted_by) values ('m1', 'blue', 'bob', 'yo', 2, now(), 'ingest')`
    const rows = await sql`select room, id, posted_by from chat_messages order by room`
    expect(rows.map((r) => ({ ...r }))).toEqual([
      { room: 'blue', id: 'm1', posted_by: 'ingest' },
      { room: 'red', id: 'm1', posted_by: '' },
    ])
    await expect(sql`insert into chat_messages (id, room, user_id, text, seq, posted_at) values ('m1', 'red', 'x', 'again', 3, now())`).rejects.toThrow(/duplicate key/)
  }))
