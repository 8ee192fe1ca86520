import { afterAll, beforeAll, expect, test } from 'bun:test'
import { sql } from 'drizzle-orm'
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

test('a revocation broadcast while a reload reads Postgres outlives that reload: what it read may predate the revocation', async () => {
  const revocations = await startRevocations({ db: database.db, nc, prefix: env.config.FANFARE_SUBJECT_PREFIX, logger: createLogger('silent'), reloadEveryMs: 1_000 })
  // Another session holds api_keys, so the next periodic reload reads users and tokens, then waits.
  const locker = await connectPostgres(env.vars.DATABASE_URL, { max: 1 })
  let release!: () => void
  const released = new Promise<void>((resolve) => (release = resolve))
  let locked!: () => void
  const isLocked = new Promise<void>((resolve) => (locked = resolve))
  const holding = locker.db.transaction(async (tx) => {
    await tx.execute(sql`lock table api_keys in access exclusive mode`)
    locked()
    await released
  })
  try {
    await isLocked
    await Bun.sleep(1_200) // the reload at 1 s is waiting on the lock
    const token = { kind: 'user' as const, id: 'mid-reload', roles: [], channels: [], expiresAt: Date.now() + 600_000, issuedAt: Date.now() - 60_000 }
    await revocations.revokeUser('mid-reload', 'test')
    await revocations.revokeToken('mid-reload-jti', new Date(Date.now() + 600_000), 'test')
    expect(revocations.isRevoked(token)).toBe(true)
    release()
    await holding
    await Bun.sleep(200) // the reload has finished; the next is 800 ms away
    expect(revocations.isRevoked(token)).toBe(true)
    expect(revocations.isRevoked({ ...token, id: 'another', jti: 'mid-reload-jti' })).toBe(true)
  } finally {
    release()
    await holding.catch(() => {})
    await locker.close()
    await revocations.stop()
  }
})

test("a jti revoked for one user is that user's alone, also as a restarted node reads it back from Postgres; a bare jti is anyone's", async () => {
  const start = () => startRevocations({ db: database.db, nc, prefix: env.config.FANFARE_SUBJECT_PREFIX, logger: createLogger('silent') })
  const token = (id: string, jti: string) => ({ kind: 'user' as const, id, roles: [], channels: [], expiresAt: Date.now() + 600_000, issuedAt: Date.now() - 60_000, jti })
  const first = await start()
  try {
    await first.revokeToken('pair-jti', new Date(Date.now() + 600_000), 'test', 'gus')
    await first.revokeToken('bare-jti', new Date(Date.now() + 600_000), 'test')
    const restarted = await start()
    try {
      for (const r of [first, restarted]) {
        expect([r.isRevoked(token('gus', 'pair-jti')), r.isRevoked(token('hal', 'pair-jti'))]).toEqual([true, false])
        expect([r.isRevoked(token('gus', 'bare-jti')), r.isRevoked(token('hal', 'bare-jti'))]).toEqual([true, true])
      }
    } finally {
      await restarted.stop()
    }
  } finally {
    await first.stop()
  }
})

test('revoking a jti again with an earlier exp (another token reusing it) never shortens the revocation already kept', async () => {
  const start = () => startRevocations({ db: database.db, nc, prefix: env.config.FANFARE_SUBJECT_PREFIX, logger: createLogger('silent') })
  const token = (id: string, jti: string) => ({ kind: 'user' as const, id, roles: [], channels: [], expiresAt: Date.now() + 600_000, issuedAt: Date.now() - 60_000, jti })
  const first = await start()
  try {
    // A token valid 10 more minutes is revoked; then another with the same jti, already expired, is too.
    for (const user of [undefined, 'ivy']) {
      await first.revokeToken(`again-jti-${user}`, new Date(Date.now() + 600_000), 'test', user)
      await first.revokeToken(`again-jti-${user}`, new Date(Date.now() - 1_000), 'test', user)
    }
    const restarted = await start()
    try {
      for (const r of [first, restarted]) {
        expect([r.isRevoked(token('ivy', 'again-jti-undefined')), r.isRevoked(token('ivy', 'again-jti-ivy'))]).toEqual([true, true])
      }
    } finally {
      await restarted.stop()
    }
  } finally {
    await first.stop()
  }
})
