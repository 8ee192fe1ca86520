import { afterAll, beforeAll, expect, test } from 'bun:test'
import { drizzle } from 'drizzle-orm/postgres-js'
import postgres from 'postgres'
import type { Db } from '../../../core/db/client'
import * as schema from '../../../core/db/schema'
import { createTestEnv, type TestEnv } from '../../../core/testing/env'
import { createKeyStore } from './keys'

/** The key lookup cache on a real database that counts the lookups it is asked for. */
let env: TestEnv
let client: ReturnType<typeof postgres>
let db: Db
let lookups = 0
beforeAll(async () => {
  env = await createTestEnv()
  client = postgres(env.vars.DATABASE_URL, { max: 2, onnotice: () => {} })
  db = drizzle(client, { schema, logger: { logQuery: (q) => void (/from "api_keys" where "api_keys"."digest" = /.test(q) && lookups++) } }) as unknown as Db
})
afterAll(async () => {
  await client?.end({ timeout: 5 })
  await env?.cleanup()
})

const guess = () => `ffk_${crypto.randomUUID().replaceAll('-', '')}`

test('an unknown secret is looked up once per 30 s; a key created after misses works at once', async () => {
  let t = 0
  const keys = createKeyStore({ db, now: () => t })
  const secret = guess()
  const before = lookups
  expect(await keys.lookup(secret)).toBeUndefined()
  expect(await keys.lookup(secret)).toBeUndefined()
  expect(lookups - before).toBe(1)
  t += 30_000
  expect(await keys.lookup(secret)).toBeUndefined()
  expect(lookups - before).toBe(2)
  // Misses cached just before do not hide a new key: its secret is one no lookup has seen.
  const { key, id } = await keys.create({ name: 'new', scopes: ['admin:read'], createdBy: 'test' })
  expect((await keys.lookup(key))?.id).toBe(id)
  await keys.stop()
})

test('a flood of unknown secrets does not push the known keys out of the cache', async () => {
  // The default size (10,000): past it the cache used to be cleared, the keys with it.
  const keys = createKeyStore({ db })
  const { key } = await keys.create({ name: 'busy', scopes: ['admin:read'], createdBy: 'test' })
  await keys.lookup(key)
  for (let i = 0; i < 101; i++) await Promise.all(Array.from({ length: 100 }, () => keys.lookup(guess())))
  const before = lookups
  expect(await keys.lookup(key)).toBeDefined()
  expect(lookups).toBe(before)
  await keys.stop()
}, 60_000)
