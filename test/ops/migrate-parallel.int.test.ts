import { afterAll, describe, expect, test } from 'bun:test'
import postgres from 'postgres'
import { TEST_PG_URL } from '../../core/testing/env'
import { ROOT } from '../e2e/harness'

// Two `npm run migrate` at once (two deploy jobs, a compose migrate service restarted while the
// first still runs): both must end with the database migrated and exit 0, not one failing on a
// half-created table.
const dbName = `fanfare_t_mig_${Date.now().toString(36)}`
const admin = postgres(TEST_PG_URL, { max: 1, onnotice: () => {} })
const url = new URL(TEST_PG_URL)
url.pathname = `/${dbName}`

afterAll(async () => {
  await admin.unsafe(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`)
  await admin.end()
})

const runMigrate = async () => {
  const proc = Bun.spawn([process.execPath, 'core/db/migrate-cli.ts'], {
    cwd: ROOT,
    env: { PATH: process.env.PATH, DATABASE_URL: url.toString(), LOG_LEVEL: 'warn' },
    stdout: 'pipe',
    stderr: 'pipe',
  })
  const [code, out, err] = await Promise.all([proc.exited, new Response(proc.stdout).text(), new Response(proc.stderr).text()])
  return { code, output: out + err }
}

describe('npm run migrate twice at once', () => {
  test('both exit 0 and the database is migrated once', async () => {
    for (let round = 0; round < 3; round++) {
      await admin.unsafe(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`)
      await admin.unsafe(`CREATE DATABASE ${dbName}`)
      const results = await Promise.all([runMigrate(), runMigrate()])
      for (const r of results) expect({ code: r.code, output: r.output.includes('migrations applied') ? 'applied' : r.output }).toEqual({ code: 0, output: 'applied' })
      const db = postgres(url.toString(), { max: 1, onnotice: () => {} })
      const [{ n }] = await db.unsafe(`select count(*)::int as n from drizzle.__drizzle_migrations`)
      const files = (await Array.fromAsync(new Bun.Glob('*.sql').scan(`${ROOT}/migrations`))).length
      await db.end()
      expect(n).toBe(files)
    }
  }, 120_000)
})
