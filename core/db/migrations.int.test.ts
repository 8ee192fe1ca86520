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

test('0002_change_runs turns outbox notices left by older workers into runs of one', async () => {
  const name = `fanfare_m_${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`
  const admin = postgres(TEST_PG_URL, { max: 1, onnotice: () => {} })
  await admin.unsafe(`CREATE DATABASE ${name}`)
  const url = new URL(TEST_PG_URL)
  url.pathname = `/${name}`
  const sql = postgres(url.toString(), { max: 1, onnotice: () => {} })
  try {
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
  } finally {
    await sql.end()
    await admin.unsafe(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
    await admin.end()
  }
})
