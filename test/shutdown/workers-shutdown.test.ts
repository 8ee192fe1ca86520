import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { jetstream, type JetStreamClient } from '@nats-io/jetstream'
import type { KV } from '@nats-io/kv'
import type { NatsConnection } from '@nats-io/transport-node'
import { connectPostgres, type Database } from '../../core/db/client'
import { changeOutbox, deadLetters, leaderboardEntries, leaderboards } from '../../core/db/schema'
import { contracts, dedupIdOf, keyOf, partitionOf, subjects, type StoredEvent } from '../../core/events'
import { liveKeys, openLeaseBucketIfExists, workersView } from '../../core/leases'
import { connectNats, ensureStreams } from '../../core/nats'
import { createTestEnv, type TestEnv } from '../../core/testing/env'
import { spawnProc, until, type Proc } from '../e2e/harness'

/**
 * SIGTERM on a stream-worker process while events flow: it exits 0 within a bound, releases its
 * leases at once (a successor takes every partition long before the lease TTL), and no event is
 * lost or applied twice (a `sum` board equals the oracle of what was published).
 */
describe('stream-workers graceful shutdown', () => {
  const PARTITIONS = 4
  // Far longer than the test waits for a takeover: only an explicit release can explain one.
  const LEASE_TTL_MS = 30_000
  const BOARD = 'shutdown'
  const PLAYERS = 200
  const TOTAL = 4000

  let env: TestEnv
  let nc: NatsConnection
  let js: JetStreamClient
  let database: Database
  const procs: Proc[] = []
  const oracle = new Map<string, number>()
  let published = 0

  const workerEnv = () => ({ ...env.vars, LOG_LEVEL: 'info' })

  const publish = async (from: number, to: number) => {
    const batch: Promise<unknown>[] = []
    for (let i = from; i < to; i++) {
      const player = `player-${i % PLAYERS}`
      const score = 1 + ((i * 7919) % 100)
      const event = {
        id: `shutdown-${i}`,
        by: 'ingest',
        type: 'score.submitted',
        v: contracts['score.submitted'].version,
        data: { board: BOARD, player, score },
        at: new Date().toISOString(),
      } as StoredEvent
      const subject = subjects.event(env.config.FANFARE_SUBJECT_PREFIX, partitionOf(keyOf(event), PARTITIONS), event.type)
      batch.push(js.publish(subject, JSON.stringify(event), { msgID: dedupIdOf(event) }))
      oracle.set(player, (oracle.get(player) ?? 0) + score)
    }
    await Promise.all(batch)
    published = to
  }

  /** Sum of every score applied so far: each applied event adds its score exactly once. */
  const appliedTotal = async () => {
    const rows = await database.db.select({ score: leaderboardEntries.score }).from(leaderboardEntries)
    return rows.reduce((a, r) => a + r.score, 0)
  }
  const oracleTotal = () => [...oracle.values()].reduce((a, b) => a + b, 0)

  beforeAll(async () => {
    env = await createTestEnv({
      FANFARE_PARTITIONS: String(PARTITIONS),
      FANFARE_LEASE_TTL_MS: String(LEASE_TTL_MS),
      // Small batches: many transactions, so the signal lands while work is in flight.
      FANFARE_BATCH_SIZE: '25',
    })
    nc = await connectNats(env.vars.NATS_URL, 'shutdown-test')
    await ensureStreams(nc, env.config)
    js = jetstream(nc)
    database = await connectPostgres(env.vars.DATABASE_URL, { max: 2 })
    await database.db.insert(leaderboards).values({ board: BOARD, sortOrder: 'desc', operator: 'sum' })
  })

  afterAll(async () => {
    for (const p of procs) await p.stop('SIGKILL').catch(() => {})
    await database?.close()
    await nc?.close()
    await env?.cleanup()
  })

  test('SIGTERM mid-flow: exit 0, leases released, every event applied exactly once', async () => {
    await publish(0, TOTAL / 2)
    const first = spawnProc('workers-1', 'stream-workers/src/main.ts', workerEnv())
    procs.push(first)
    await until('the first worker applies events', async () => {
      if (first.proc.exitCode !== null) throw new Error(`workers-1 exited ${first.proc.exitCode}:\n${first.output().slice(-3000)}`)
      return (await appliedTotal()) > 0
    }, 30_000, 50)

    // Keep events flowing while the signal arrives.
    const rest = publish(TOTAL / 2, TOTAL)
    const signalled = Date.now()
    first.proc.kill('SIGTERM')
    const exit = await Promise.race([first.proc.exited, Bun.sleep(10_000).then(() => 'timeout' as const)])
    const tookMs = Date.now() - signalled
    expect({ exit, output: exit === 0 ? '' : first.output().slice(-3000) }).toEqual({ exit: 0, output: '' })
    expect(tookMs).toBeLessThan(10_000)
    await rest
    const appliedAtExit = await appliedTotal()
    // Every run it committed was published and its outbox row deleted before it exited.
    expect(await database.db.select().from(changeOutbox)).toEqual([])

    // Released, not left to expire: no lease key and no heartbeat remain.
    const kv = (await openLeaseBucketIfExists(nc, env.config)) as KV
    expect(kv).toBeDefined()
    expect(await liveKeys(kv)).toEqual([])

    const second = spawnProc('workers-2', 'stream-workers/src/main.ts', workerEnv())
    procs.push(second)
    const takeoverStarted = Date.now()
    await until('the second worker holds every partition', async () => {
      if (second.proc.exitCode !== null) throw new Error(`workers-2 exited ${second.proc.exitCode}:\n${second.output().slice(-3000)}`)
      const view = await workersView(kv)
      return view.length === 1 && view[0].partitions.length === PARTITIONS
    }, 10_000, 50)
    // Far below the lease TTL: the partitions were free, not expired.
    expect(Date.now() - takeoverStarted).toBeLessThan(LEASE_TTL_MS / 2)

    await until('every event applied', async () => (await appliedTotal()) >= oracleTotal(), 30_000, 100)
    expect(published).toBe(TOTAL)
    // Exactly once, per key: a lost event leaves a player short, a doubled one over.
    const rows = await database.db.select().from(leaderboardEntries)
    const actual = new Map(rows.map((r) => [r.player, r.score]))
    expect(actual).toEqual(oracle)
    expect(await database.db.select().from(deadLetters)).toEqual([])
    // The first worker had not finished everything: the shutdown really cut into the flow.
    expect(appliedAtExit).toBeLessThan(oracleTotal())

    expect(await second.stop('SIGTERM')).toBe(0)
    expect(await liveKeys(kv)).toEqual([])
    expect(await database.db.select().from(changeOutbox)).toEqual([])
  }, 90_000)
})
