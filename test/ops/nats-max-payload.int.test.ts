import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import type { TestEnv } from '../../core/testing/env'
import { runUntilExit } from '../e2e/harness'
import type { PrivateNats } from '../cluster/private-nats'
import { privateNatsDeployment, type PrivateNatsDeployment } from '../cluster/support'

// A nats-server whose max_payload an operator lowered (64 KB here) below what Fanfare publishes: a
// worker's change runs (up to ~768 KB) were refused by the client on every try, the read models
// went on advancing and subscribers got no update, with /readyz saying ready; an event over the
// limit was answered 503 `unavailable` after the publish timeout, resent forever. Both kinds of
// node must refuse to start, naming the setting.
let d: PrivateNatsDeployment | undefined
let env: TestEnv
let nats: PrivateNats

beforeAll(async () => {
  d = await privateNatsDeployment('max-payload', { FANFARE_LOG_FORMAT: 'json' }, { extra: ['max_payload: 64KB'] })
  ;({ env, nats } = d)
})
afterAll(async () => {
  await d?.close()
})

const start = (entry: string) => runUntilExit(entry, { ...env.vars, NATS_URL: nats.url })

describe('a NATS server with a max_payload below 1 MB', () => {
  for (const [name, entry] of [
    ['API node', 'api/src/main.ts'],
    ['stream workers', 'stream-workers/src/main.ts'],
  ] as const) {
    test(`${name}: exits non-zero within seconds, naming max_payload and the size it needs`, async () => {
      const r = await start(entry)
      expect(r.code).not.toBe(0)
      expect(r.code).not.toBe(137) // still running after 15 s
      expect(r.output).toContain('max_payload is 65536 bytes')
      expect(r.output).toContain('1048576')
    }, 30_000)
  }
})
