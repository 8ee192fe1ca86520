import { describe, expect, test } from 'bun:test'
import { sql } from 'drizzle-orm'
import { connectBunSql, connectPostgres } from './db/client'
import { createLogger } from './logger'
import { TEST_PG_URL } from './testing/env'

const capture = () => {
  const lines: string[] = []
  return { lines, output: { write: (l: string) => lines.push(l), isTTY: false } }
}

describe('logger: database errors', () => {
  // drizzle wraps a failed query as `Failed query: <sql> params: <params>`: event data in the logs.
  for (const [driver, connect] of [
    ['postgres.js', connectPostgres],
    ["Bun's SQL", connectBunSql],
  ] as const) {
    test(`a query's text and parameters stay out of the log; the SQLSTATE and Postgres' message are in it (${driver})`, async () => {
      const database = await connect(TEST_PG_URL, { max: 1 })
      const { lines, output } = capture()
      const log = createLogger('info', {}, { output })
      try {
        await database.db.execute(sql`insert into fanfare_no_such_table values (${'Alice: meet me at 5, my number is 555'})`)
      } catch (err) {
        log.warn({ err }, 'failed')
      } finally {
        await database.close()
      }
      expect(lines).toHaveLength(1)
      expect(lines[0]).not.toContain('Alice')
      expect(lines[0]).not.toContain('insert into')
      expect(JSON.parse(lines[0]).err).toMatchObject({ code: '42P01', message: '42P01 relation "fanfare_no_such_table" does not exist' })
    })
  }

  test('other errors keep their message, stack and cause', () => {
    const { lines, output } = capture()
    createLogger('info', {}, { output }).error({ err: new Error('outer', { cause: new Error('inner') }) }, 'failed')
    const { err } = JSON.parse(lines[0])
    expect(err.message).toContain('outer')
    expect(err.stack).toContain('outer')
    expect(JSON.stringify(err)).toContain('inner')
  })
})
