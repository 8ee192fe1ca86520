import { afterAll, describe, expect, test } from 'bun:test'
import { sql } from 'drizzle-orm'
import { createTestEnv, type TestEnv } from '../testing/env'
import { proxyDatabase, type TcpProxy } from '../testing/tcp-proxy'
import { connectBunSql, connectPostgres, NotAnswering, rowsOf, type DroppableDatabase } from './client'
import { isTransientDbError } from './errors'

/** Milliseconds `p` took to settle, and how (never rejects). */
async function timed(p: Promise<unknown>): Promise<{ ms: number; err?: unknown }> {
  const started = Date.now()
  try {
    await p
    return { ms: Date.now() - started }
  } catch (err) {
    return { ms: Date.now() - started, err }
  }
}

/**
 * Both drivers behind a tcp proxy that stops carrying packets (stall): a query on an open
 * connection waits for as long as the stall lasts, a ping says so within its timeout, and
 * dropConnections fails the waiting query at once with a transient error; new connections give up
 * after the connect timeout, and once the path is back the same Db works again (drizzle's own
 * settings kept: postgres.js gives timestamps as strings).
 */
describe.each([
  ['postgres.js', connectPostgres],
  ["Bun's SQL", connectBunSql],
] as const)('a droppable database (%s) behind a stalled path', (_, connect) => {
  let env: TestEnv | undefined
  let proxy: TcpProxy | undefined
  let database: DroppableDatabase | undefined
  afterAll(async () => {
    proxy?.restore()
    await database?.close()
    proxy?.close()
    await env?.cleanup()
  })

  test('ping, drop and reconnect', async () => {
    env = await createTestEnv()
    const proxied = proxyDatabase(env.vars.DATABASE_URL)
    proxy = proxied.proxy
    database = await connect(proxied.url, { max: 2, connectTimeoutMs: 1000 })
    const { db } = database
    const now = () => rowsOf<{ t: unknown }>(db, sql`select now() as t`)
    expect(await db.transaction(async (tx) => rowsOf<{ n: number }>(tx, sql`select 1 as n`))).toHaveLength(1)
    await database.ping(1000)
    const stringDates = typeof (await now())[0].t === 'string'

    proxy.stall()
    const waiting = timed(db.execute(sql`select 2`))
    const inTransaction = timed(db.transaction(async (tx) => tx.execute(sql`select 3`)))
    const ping = await timed(database.ping(500))
    expect(ping.err).toBeInstanceOf(NotAnswering)
    expect(ping.ms).toBeLessThan(2000)
    database.dropConnections()
    for (const q of [await waiting, await inTransaction]) {
      expect(isTransientDbError(q.err)).toBe(true)
      expect(q.ms).toBeLessThan(3000)
    }
    // A new connection cannot log in through the stall: it gives up after the connect timeout.
    const fresh = await timed(db.execute(sql`select 4`))
    expect(isTransientDbError(fresh.err)).toBe(true)
    expect(fresh.ms).toBeLessThan(5000)

    proxy.restore()
    await database.ping(5000)
    expect(typeof (await now())[0].t === 'string').toBe(stringDates)
    expect(await db.transaction(async (tx) => rowsOf<{ n: number }>(tx, sql`select 5 as n`))).toEqual([{ n: 5 }])
  }, 30_000)
})
