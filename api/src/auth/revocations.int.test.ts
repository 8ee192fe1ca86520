import { afterAll, beforeAll, expect, test } from 'bun:test'
import { connectPostgres, type Database } from '../../../core/db/client'
import { createLogger } from '../../../core/logger'
import { connectNats } from '../../../core/nats'
import { createTestEnv, type TestEnv } from '../../../core/testing/env'
import { startRevocations } from './revocations'

let env: TestEnv
let database: Database
let nc: Awaited<ReturnType<typeof connectNats>>

beforeAll(async () => {
  env = await createTestEnv()
  database = await connectPostgres(env.vars.DATABASE_URL, { max: 2 })
  nc = await connectNats(env.vars.NATS_URL, 'revocations-clock-test')
})
afterAll(async () => {
  await nc?.close()
  await database?.close()
  await env?.cleanup()
})

test("a user revocation's cut-off is not earlier than Postgres' clock: a node whose clock is slow still revokes the tokens issued before it", async () => {
  // This node's clock is 5 minutes slow; the token was issued 1 minute ago (by the game's auth, on time).
  const slow = await startRevocations({ db: database.db, nc, prefix: env.config.FANFARE_SUBJECT_PREFIX, logger: createLogger('silent'), now: () => Date.now() - 300_000 })
  try {
    const r = await slow.revokeUser('skew', 'test')
    expect(r.kind === 'user' && r.before).toBeGreaterThanOrEqual(Date.now() - 5_000)
    const issuedAt = Date.now() - 60_000
    expect(slow.isRevoked({ kind: 'user', id: 'skew', roles: [], channels: [], expiresAt: Date.now() + 600_000, issuedAt })).toBe(true)
    // A token issued after the revocation still works.
    expect(slow.isRevoked({ kind: 'user', id: 'skew', roles: [], channels: [], expiresAt: Date.now() + 600_000, issuedAt: Date.now() + 1_000 })).toBe(false)
  } finally {
    await slow.stop()
  }
})
