import { afterAll, describe, test } from 'bun:test'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createTestEnv, type TestEnv } from '../../core/testing/env'
import { freePort, spawnProc, waitReady, type Proc } from './harness'
import { runScenario } from './scenario'

/** Real processes: `npm run api` and `npm run workers` against the machine's Postgres and NATS. */
describe('end to end: separate api and stream-worker processes, real Postgres and NATS', () => {
  let env: TestEnv
  const procs: Proc[] = []
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop()))
    await env?.cleanup()
  })

  test('events in over REST and WebSocket, read models and live updates out', async () => {
    env = await createTestEnv({ FANFARE_PARTITIONS: '4', FANFARE_LEASE_TTL_MS: '3000' })
    const port = freePort()
    const vars = { ...env.vars, PORT: String(port), HOST: '127.0.0.1' }
    procs.push(spawnProc('api', 'api/src/main.ts', vars))
    procs.push(spawnProc('worker-1', 'stream-workers/src/main.ts', vars))
    procs.push(spawnProc('worker-2', 'stream-workers/src/main.ts', vars))
    const baseUrl = `http://127.0.0.1:${port}`
    await waitReady(baseUrl, procs)
    await runScenario({
      baseUrl,
      wsUrl: `ws://127.0.0.1:${port}/v1/ws`,
      ingestToken: env.vars.FANFARE_INGEST_TOKEN,
      adminToken: env.vars.FANFARE_ADMIN_TOKEN,
      jwtSecret: env.vars.FANFARE_JWT_SECRET,
    })
    for (const p of procs) expect0(await p.stop(), p)
  }, 120_000)
})

/** The all-in-one mode a user gets from `npm start` with nothing configured: PGlite + its own nats-server. */
describe('end to end: all-in-one mode with embedded PGlite and a spawned nats-server', () => {
  const dataDir = mkdtempSync(join(tmpdir(), 'fanfare-e2e-'))
  let proc: Proc | undefined
  afterAll(async () => {
    await proc?.stop()
    rmSync(dataDir, { recursive: true, force: true })
  })

  test('the same story against the embedded defaults', async () => {
    const port = freePort()
    const ingestToken = `ingest-${crypto.randomUUID()}`
    const adminToken = `admin-${crypto.randomUUID()}`
    const jwtSecret = `jwt-${crypto.randomUUID()}`
    proc = spawnProc('all-in-one', 'scripts/all-in-one.ts', {
      DATABASE_URL: undefined,
      NATS_URL: undefined,
      FANFARE_DATA_DIR: dataDir,
      PORT: String(port),
      HOST: '127.0.0.1',
      FANFARE_INGEST_TOKEN: ingestToken,
      FANFARE_ADMIN_TOKEN: adminToken,
      FANFARE_JWT_SECRET: jwtSecret,
      LOG_LEVEL: 'warn',
    })
    const baseUrl = `http://127.0.0.1:${port}`
    await waitReady(baseUrl, [proc], 60_000)
    await runScenario({ baseUrl, wsUrl: `ws://127.0.0.1:${port}/v1/ws`, ingestToken, adminToken, jwtSecret })
    expect0(await proc.stop(), proc)
  }, 180_000)
})

function expect0(code: number, p: Proc) {
  if (code !== 0) throw new Error(`${p.name} exited ${code} on SIGTERM:\n${p.output().slice(-3000)}`)
}
