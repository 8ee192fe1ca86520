import { afterEach, describe, expect, test } from 'bun:test'
import { sql } from 'drizzle-orm'
import { connectPostgres, type Database } from '../../../core/db/client'
import { createLogger } from '../../../core/logger'
import { connectNats } from '../../../core/nats'
import { freePort } from '../../../core/process'
import { createTestEnv, type TestEnv } from '../../../core/testing/env'
import { until } from '../../../core/testing/wait'
import { tcpProxy, type TcpProxy } from '../../../core/testing/tcp-proxy'
import { createRoomAccess, type RoomAccess } from './rooms'

describe('room visibility on two API nodes', () => {
  let env: TestEnv | undefined
  const closers: (() => Promise<void> | void)[] = []
  afterEach(async () => {
    for (const close of closers.splice(0).reverse()) await close()
    await env?.cleanup()
    env = undefined
  })

  test('a lookup overtaken by a change answers the value after it, not the one it read before', async () => {
    env = await createTestEnv()
    // Node A reads Postgres through a proxy that can hold its answers back (a slow network).
    const url = new URL(env.vars.DATABASE_URL)
    const proxy: TcpProxy = tcpProxy({ port: freePort(), target: { host: url.hostname, port: Number(url.port || 5432) } })
    closers.push(() => proxy.close())
    url.port = String(proxy.port)
    const slowDb: Database = await connectPostgres(url.toString(), { max: 1 })
    closers.push(() => slowDb.close())
    const db: Database = await connectPostgres(env.vars.DATABASE_URL, { max: 1 })
    closers.push(() => db.close())
    const nc = await connectNats(env.vars.NATS_URL, 'rooms-test')
    closers.push(() => nc.close())
    const prefix = env.config.FANFARE_SUBJECT_PREFIX
    const a: RoomAccess = createRoomAccess({ db: slowDb.db, nc, prefix, logger: createLogger('silent') })
    const b: RoomAccess = createRoomAccess({ db: db.db, nc, prefix, logger: createLogger('silent') })
    closers.push(() => a.stop(), () => b.stop())
    const changesSeenByA: string[] = []
    a.onChange((room) => changesSeenByA.push(room))
    expect(await a.visibility('warm-up')).toBe('public') // the connection is open before the hold

    proxy.hold()
    // A subscriber's check on node A: Postgres answers "public" (no setting yet), the answer waits.
    const lookup = a.visibility('vip')
    await Bun.sleep(200)
    // The driver describes the statement first and executes it on the answer: let that one
    // through (it is all that is held yet) and hold again before this process can read it.
    proxy.release()
    proxy.hold()
    const executed = () => db.db.execute(sql`select count(*)::int as n from pg_stat_activity where datname = current_database() and state = 'active' and pid <> pg_backend_pid()`)
    await until('the lookup executed (its answer held)', async () => ((await executed()) as unknown as { n: number }[])[0].n === 0)
    // Meanwhile node B makes the room private; node A hears of it and re-checks the room's
    // subscribers, before the answer of the lookup comes in.
    await b.setVisibility('vip', 'private')
    await until('node A told of the change', () => changesSeenByA.includes('vip'))
    proxy.release()
    // Answering "public" now would let that subscriber in after the re-check that should have
    // dropped it: it would receive the private room for as long as it stays.
    expect(await lookup).toBe('private')
    expect(await a.visibility('vip')).toBe('private')
  }, 30_000)
})
