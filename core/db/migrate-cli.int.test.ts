import { expect, test } from 'bun:test'
import { resolve } from 'node:path'
import { TEST_PG_URL } from '../testing/env'

const ROOT = resolve(import.meta.dir, '../..')

/** `npm run migrate` on a Postgres server without the database: what the README says to do, no stack trace. */
test('a missing database is named, with how to create it, and exit status 1', async () => {
  const name = `fanfare_missing_${process.pid}_${Date.now()}`
  const env: Record<string, string> = {}
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('FANFARE_') && k !== 'NATS_URL') env[k] = v
  env.DATABASE_URL = TEST_PG_URL.replace(/\/[^/]*$/, `/${name}`)
  const proc = Bun.spawn([process.execPath, 'core/db/migrate-cli.ts'], { cwd: ROOT, env, stdout: 'pipe', stderr: 'pipe' })
  const [code, out, err] = await Promise.all([proc.exited, new Response(proc.stdout).text(), new Response(proc.stderr).text()])
  const output = out + err
  expect(code).toBe(1)
  expect(output).toContain(`database "${name}" does not exist`)
  expect(output).toContain('createdb')
  expect(output).not.toMatch(/^\s+at /m)
}, 30_000)

/** A server that is not there (a wrong port or host in DATABASE_URL): the setting and the reason, no stack trace. */
test('an unreachable database is named by its setting, with the reason, and exit status 1', async () => {
  const env: Record<string, string> = {}
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('FANFARE_') && k !== 'NATS_URL') env[k] = v
  // Port 1 on the loopback: nothing listens there.
  env.DATABASE_URL = 'postgres://postgres@127.0.0.1:1/fanfare'
  const proc = Bun.spawn([process.execPath, 'core/db/migrate-cli.ts'], { cwd: ROOT, env, stdout: 'pipe', stderr: 'pipe' })
  const [code, out, err] = await Promise.all([proc.exited, new Response(proc.stdout).text(), new Response(proc.stderr).text()])
  const output = out + err
  expect(code).toBe(1)
  expect(output).toContain('cannot migrate the database at DATABASE_URL: ')
  expect(output).toContain('ECONNREFUSED')
  expect(output).not.toMatch(/^\s+at /m)
}, 30_000)
