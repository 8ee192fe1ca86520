import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { createTestEnv, type TestEnv } from '../../core/testing/env'
import { freePort, ROOT, runUntilExit, spawnProc, waitReady } from '../e2e/harness'

// An API node or a worker started on a database `npm run migrate` has not prepared (a new
// deployment whose migrate job has not run yet, or a new version before its migrations): it must
// stop at once with a message naming the fix, not crash on a raw SQL error (or run half-working).
let env: TestEnv
let vars: Record<string, string>

beforeAll(async () => {
  env = await createTestEnv({ FANFARE_LOG_FORMAT: 'json' }, { migrated: false })
  vars = env.vars
})
afterAll(async () => {
  await env?.cleanup()
})

const start = (entry: string) => runUntilExit(entry, vars)

describe('a node started before npm run migrate', () => {
  for (const [name, entry] of [
    ['API node', 'api/src/main.ts'],
    ['stream workers', 'stream-workers/src/main.ts'],
  ] as const) {
    test(`${name}: exits non-zero within seconds, saying to run npm run migrate`, async () => {
      const r = await start(entry)
      expect(r.code).not.toBe(0)
      expect(r.code).not.toBe(137) // still running after 15 s
      expect(r.output).toContain('not migrated')
      expect(r.output).toContain('npm run migrate')
      // One line that says what happened, as both processes print it (not a runtime's uncaught-error dump).
      expect(r.output).toMatch(/fanfare (api|stream-workers): failed to start: NotMigrated/)
    }, 30_000)
  }

  test('once migrated, the same API node starts and is ready', async () => {
    const m = Bun.spawn([process.execPath, 'core/db/migrate-cli.ts'], { cwd: ROOT, env: { PATH: process.env.PATH, ...vars }, stdout: 'ignore', stderr: 'ignore' })
    expect(await m.exited).toBe(0)
    const port = await freePort()
    const api = spawnProc('api', 'api/src/main.ts', { ...vars, PORT: String(port), HOST: '127.0.0.1' })
    try {
      await waitReady(`http://127.0.0.1:${port}`, [api])
    } finally {
      expect(await api.stop()).toBe(0)
    }
  }, 60_000)
})
