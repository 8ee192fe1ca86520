import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { createTestEnv, type TestEnv } from '../../core/testing/env'
import { freePort, runUntilExit, spawnProc, until } from '../e2e/harness'

// What an operator meets when a node cannot start for a setting: one line naming the setting and
// the cause, exit status 1, before the node did any work it would have to undo (no stack trace).
let env: TestEnv
const taken: ReturnType<typeof Bun.serve>[] = []
beforeAll(async () => {
  env = await createTestEnv()
})
afterAll(async () => {
  for (const server of taken) await server.stop(true)
  await env?.cleanup()
})

/** A port on 127.0.0.1 another process listens on. */
function takenPort(): number {
  const server = Bun.serve({ port: 0, hostname: '127.0.0.1', reusePort: false, fetch: () => new Response('not fanfare') })
  taken.push(server)
  return server.port!
}

/** The lines a node printed that are not JSON log records. */
const plainLines = (output: string) => output.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('{'))

// Settings pointing nowhere, so that a node that checks its port after connecting says so instead.
const nowhere = { DATABASE_URL: 'postgres://fanfare:s3cret@127.0.0.1:1/fanfare', NATS_URL: 'nats://127.0.0.1:1' }

// A taken FANFARE_METRICS_PORT: see start-mistakes.int.test.ts.
describe('the port is checked first', () => {
  test('API node: a PORT already taken is one line naming PORT, before Postgres and NATS', async () => {
    const port = takenPort()
    const r = await runUntilExit('api/src/main.ts', { ...env.vars, ...nowhere, PORT: String(port) })
    expect(plainLines(r.output)).toEqual([
      `fanfare api: failed to start: ListenFailed: cannot listen on 127.0.0.1:${port}: the port is in use by another process (another Fanfare?): stop it, or set PORT to a free port`,
    ])
    expect(r.code).toBe(1)
  }, 30_000)
})

describe('one port for two listeners', () => {
  test('API node: FANFARE_METRICS_PORT equal to PORT is one line saying so, before Postgres and NATS', async () => {
    const port = await freePort()
    const r = await runUntilExit('api/src/main.ts', { ...env.vars, ...nowhere, PORT: String(port), FANFARE_METRICS_PORT: String(port) })
    expect(plainLines(r.output)).toEqual([
      `fanfare api: failed to start: ListenFailed: cannot listen on 127.0.0.1:${port} twice: FANFARE_METRICS_PORT is the same port as PORT; set FANFARE_METRICS_PORT to another port`,
    ])
    expect(r.code).toBe(1)
  }, 30_000)
})

describe('a database URL that leads nowhere', () => {
  for (const [name, entry, who, cause] of [
    // postgres.js names the refused address; Bun's SQL client (the workers') only its own code.
    ['API node', 'api/src/main.ts', 'api', 'connect ECONNREFUSED 127.0.0.1:1'],
    ['stream workers', 'stream-workers/src/main.ts', 'stream-workers', 'Failed to connect (ERR_POSTGRES_CONNECTION_REFUSED)'],
  ] as const) {
    test(`${name}: DATABASE_URL is named with the cause on one line, without the login`, async () => {
      const r = await runUntilExit(entry, { ...env.vars, DATABASE_URL: nowhere.DATABASE_URL })
      expect(plainLines(r.output)).toEqual([`fanfare ${who}: failed to start: DatabaseUnreachable: cannot use the database at DATABASE_URL (postgres://***@127.0.0.1:1/fanfare): ${cause}`])
      expect(r.output).not.toContain('s3cret')
      expect(r.code).toBe(1)
    }, 30_000)
  }

  test('API node: a DATABASE_READ_URL that does not answer is named in a warning, without the login; the node starts not ready', async () => {
    const port = await freePort()
    const api = spawnProc('api', 'api/src/main.ts', { ...env.vars, PORT: String(port), DATABASE_READ_URL: 'postgres://reader:s3cret@127.0.0.1:1/fanfare?sslmode=disable' })
    try {
      // Not fatal: a replica restarting beside the node would otherwise keep the node crash-looping.
      const ready = await until('the node answering /readyz', async () => {
        const res = await fetch(`http://127.0.0.1:${port}/readyz`).catch(() => undefined)
        return res && { status: res.status, body: await res.text() }
      })
      expect(ready.status).toBe(503)
      expect(ready.body).toContain('"postgresRead":false')
      expect(api.output()).toContain('cannot use the database at DATABASE_READ_URL (postgres://***@127.0.0.1:1/fanfare): connect ECONNREFUSED 127.0.0.1:1: starting not ready')
      expect(api.output()).not.toContain('s3cret')
    } finally {
      await api.stop()
    }
  }, 30_000)
})
