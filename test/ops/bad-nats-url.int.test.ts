import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { createTestEnv, type TestEnv } from '../../core/testing/env'
import { runUntilExit } from '../e2e/harness'

// A node whose NATS_URL leads nowhere (a wrong port or host): it must stop at once with one line
// naming NATS_URL and the cause, as `npm run migrate` does, not a runtime's dump of two stack traces.
let env: TestEnv
beforeAll(async () => {
  env = await createTestEnv()
})
afterAll(async () => {
  await env?.cleanup()
})

describe('a node started with a NATS_URL nothing answers at', () => {
  for (const [name, entry, who] of [
    ['API node', 'api/src/main.ts', 'api'],
    ['stream workers', 'stream-workers/src/main.ts', 'stream-workers'],
  ] as const) {
    test(`${name}: exits 1 with one line naming NATS_URL and the cause`, async () => {
      // Port 1 on the loopback: nothing listens there.
      const r = await runUntilExit(entry, { ...env.vars, NATS_URL: 'nats://127.0.0.1:1', LOG_LEVEL: 'warn' })
      expect(r.code).toBe(1)
      const lines = r.output.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('{'))
      expect(lines).toEqual([`fanfare ${who}: failed to start: NatsUnreachable: cannot reach NATS at NATS_URL (nats://127.0.0.1:1): connection refused`])
    }, 30_000)
  }
})
