import { expect, test } from 'bun:test'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { findNatsServer } from '../../scripts/embedded-nats'
import { freePort } from '../process'
import { TEST_NATS_URL, TEST_PG_URL } from '../testing/env'

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

/** Runs `npm run migrate`'s script with only these settings of Fanfare's (no DATABASE_URL unless given). */
async function migrateWith(vars: Record<string, string>) {
  const env: Record<string, string> = {}
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('FANFARE_') && k !== 'NATS_URL' && k !== 'DATABASE_URL') env[k] = v
  // Names of this test's own, should a NATS_URL below ever reach a server.
  Object.assign(env, { FANFARE_STREAM: `MIGRATE_CLI_${process.pid}`, FANFARE_SUBJECT_PREFIX: `migrate_cli_${process.pid}` }, vars)
  const proc = Bun.spawn([process.execPath, 'core/db/migrate-cli.ts'], { cwd: ROOT, env, stdout: 'pipe', stderr: 'pipe' })
  const [code, out, err] = await Promise.all([proc.exited, new Response(proc.stdout).text(), new Response(proc.stderr).text()])
  return { code, out, err }
}

/** A NATS_URL nothing answers at: the setting, the server and the reason on one line, no stack trace. */
test('an unreachable NATS is named by its setting, with the reason, on one line, and exit status 1', async () => {
  const { code, err } = await migrateWith({ NATS_URL: 'nats://127.0.0.1:1' })
  expect(code).toBe(1)
  expect(err.trim()).toBe('cannot upgrade NATS: cannot reach NATS at NATS_URL (nats://127.0.0.1:1): connection refused')
}, 30_000)

/** A NATS_URL whose login is not percent-encoded: refused as a setting, naming NATS_URL, never the password. */
test('a NATS_URL that cannot be read is named, without its login, and nothing is run', async () => {
  const { code, out, err } = await migrateWith({ NATS_URL: 'nats://fanfare:50%off@127.0.0.1:1' })
  expect(code).toBe(2)
  expect(out).toBe('')
  expect(err.trim()).toBe(
    'invalid configuration:\n  NATS_URL: the login in "nats://***@127.0.0.1:1" is not percent-encoded: a % must start %XX (encode the user and password with encodeURIComponent)',
  )
}, 30_000)

/**
 * tls:// asks for an encrypted connection. nats.js reads no scheme from a server URL and encrypted
 * only when the server asked, so `tls://` against a plain-text server connected in plain text and
 * the upgrade ran (exit 0): a TLS request that cannot be honoured must fail, saying so.
 */
test('a tls:// NATS_URL to a server without TLS is refused on one line, and exit status 1', async () => {
  const { code, out, err } = await migrateWith({ NATS_URL: TEST_NATS_URL.replace(/^nats:/, 'tls:') })
  expect(out).not.toContain('nats streams and buckets match the config')
  expect(code).toBe(1)
  expect(err.trim()).toBe(
    `cannot upgrade NATS: NATS_URL asks for TLS (tls://) but the server at ${TEST_NATS_URL.replace(/^nats:/, 'tls:')} does not offer it: enable TLS on the server (a tls block in its config), or write nats:// to connect in plain text`,
  )
}, 30_000)

/** The same tls:// against a nats-server that requires TLS: the upgrade runs over it (the test CA given by NODE_EXTRA_CA_CERTS). */
test('a tls:// NATS_URL to a server requiring TLS upgrades NATS over TLS', async () => {
  const binary = findNatsServer()
  if (!binary) throw new Error('nats-server is not installed')
  const dir = mkdtempSync(join(tmpdir(), 'fanfare-tls-'))
  const tls = resolve(ROOT, 'test/fixtures/tls')
  const port = freePort()
  writeFileSync(
    join(dir, 'nats.conf'),
    `host: 127.0.0.1\nport: ${port}\njetstream { store_dir: ${JSON.stringify(dir)} }\ntls { cert_file: ${JSON.stringify(join(tls, 'server.pem'))}, key_file: ${JSON.stringify(join(tls, 'server.key'))} }\n`,
  )
  const server = Bun.spawn([binary, '-c', join(dir, 'nats.conf')], { stdout: 'ignore', stderr: 'pipe' })
  try {
    let log = ''
    const decoder = new TextDecoder()
    for await (const chunk of server.stderr as ReadableStream<Uint8Array>) {
      log += decoder.decode(chunk)
      if (log.includes('Server is ready')) break
    }
    expect(log).toContain('TLS required for client connections')
    const { code, out, err } = await migrateWith({ NATS_URL: `tls://127.0.0.1:${port}`, NODE_EXTRA_CA_CERTS: join(tls, 'ca.pem') })
    expect(err).toBe('')
    expect(code).toBe(0)
    expect(out).toContain('nats streams and buckets match the config (1 replica)')
  } finally {
    server.kill('SIGKILL')
    await server.exited
    rmSync(dir, { recursive: true, force: true })
  }
}, 30_000)
