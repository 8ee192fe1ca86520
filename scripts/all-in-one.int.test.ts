import { afterAll, describe, expect, test } from 'bun:test'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createLogger } from '../core/logger'
import { createTestEnv, type TestEnv } from '../core/testing/env'
import { banner, startAllInOne, type AllInOne } from './all-in-one'

const logger = createLogger('silent')
const cleanups: (() => Promise<void> | void)[] = []
afterAll(async () => {
  for (const fn of cleanups.reverse()) await fn()
})

async function healthz(app: AllInOne): Promise<number> {
  const res = await fetch(`${app.url}/healthz`)
  return res.status
}

describe('all-in-one', () => {
  test('runs API and workers against Postgres and NATS from the environment', async () => {
    const env: TestEnv = await createTestEnv({ PORT: '0', HOST: '127.0.0.1' })
    cleanups.push(env.cleanup)
    const app = await startAllInOne(env.vars, logger)
    cleanups.push(app.stop)
    expect(app.generated).toEqual({ ingest: false, admin: false })
    expect(app.config.FANFARE_INGEST_TOKEN).toBe(env.vars.FANFARE_INGEST_TOKEN)
    expect(await healthz(app)).toBe(200)
    await app.stop()
  }, 60_000)

  test('embedded mode: PGlite and a private nats-server, generated tokens, one process per data dir', async () => {
    // createTestEnv is not needed: this mode owns its database and NATS, in a scratch directory.
    const dataDir = mkdtempSync(join(tmpdir(), 'fanfare-aio-'))
    cleanups.push(() => rmSync(dataDir, { recursive: true, force: true }))
    const vars = { PORT: '0', HOST: '127.0.0.1', FANFARE_DATA_DIR: dataDir, LOG_LEVEL: 'silent' }
    const app = await startAllInOne(vars, logger)
    cleanups.push(app.stop)
    expect(app.generated).toEqual({ ingest: true, admin: true })
    expect(app.config.FANFARE_INGEST_TOKEN).toMatch(/^[A-Za-z0-9_-]{43}$/)
    expect(app.config.NATS_URL).toMatch(/^nats:\/\/127\.0\.0\.1:\d+$/)
    expect(banner(app)).toContain(app.config.FANFARE_ADMIN_TOKEN!)
    expect(await healthz(app)).toBe(200)

    await expect(startAllInOne(vars, logger)).rejects.toThrow(/in use by process/)
    await app.stop()
  }, 60_000)
})
