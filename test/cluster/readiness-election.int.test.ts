import { afterAll, describe, expect, test } from 'bun:test'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { connect, type NatsConnection } from '@nats-io/transport-node'
import { startApi, type RunningApi } from '../../api/src/server'
import { connectPostgres, type Database } from '../../core/db/client'
import { createLogger } from '../../core/logger'
import { ensureStreams } from '../../core/nats'
import { createTestEnv, type TestEnv } from '../../core/testing/env'
import { until } from '../../core/testing/wait'
import { privateNatsCluster, type PrivateNatsCluster } from './private-nats'

const GRACE_S = 8

/**
 * A JetStream outage every API node sees alike (a NATS cluster's streams without a leader: here
 * two of three servers killed, so the survivor the node is connected to has no quorum) must not
 * take every node out of a balancer at once: /readyz answers 200 `degraded` for
 * FANFARE_READY_GRACE_S, then 503 `not_ready` (an outage that lasts is one), and `ready` again once
 * the cluster answers. Before, it answered 503 at the first check.
 */
describe('readiness while JetStream has no leader', () => {
  let cluster: PrivateNatsCluster | undefined
  let env: TestEnv | undefined
  let database: Database | undefined
  let nc: NatsConnection | undefined
  let api: RunningApi | undefined
  const storeDir = mkdtempSync(join(tmpdir(), 'fanfare-ready-election-'))
  afterAll(async () => {
    await api?.stop().catch(() => {})
    await nc?.close().catch(() => {})
    await database?.close()
    await cluster?.stop()
    await env?.cleanup()
    rmSync(storeDir, { recursive: true, force: true })
  })

  test(`200 degraded within FANFARE_READY_GRACE_S (${GRACE_S} s), 503 after it, ready when the cluster answers again`, async () => {
    cluster = privateNatsCluster({ size: 3, storeDir })
    await cluster.start()
    env = await createTestEnv({ NATS_URL: cluster.url, FANFARE_REPLICAS: '3', FANFARE_READY_GRACE_S: String(GRACE_S), PORT: '0', HOST: '127.0.0.1' })
    database = await connectPostgres(env.vars.DATABASE_URL, { max: 4 })
    // Connected to the server that survives: the node's own connection stays up throughout.
    const survivor = cluster.nodes[0]
    nc = await connect({ servers: survivor.url, maxReconnectAttempts: -1, reconnectTimeWait: 250 })
    await ensureStreams(nc, env.config)
    api = await startApi({ config: env.config, db: database.db, nc, logger: createLogger('silent') })
    const base = `http://127.0.0.1:${api.port}`
    type Sample = { at: number; status: number; body: any }
    const readyz = async (): Promise<Sample> => {
      const res = await fetch(`${base}/readyz`, { signal: AbortSignal.timeout(10_000) })
      return { at: Date.now(), status: res.status, body: await res.json() }
    }
    await until('the node ready', async () => (await readyz()).body.status === 'ready', 30_000, 200)

    await Promise.all([cluster.nodes[1].kill(), cluster.nodes[2].kill()])
    const killedAt = Date.now()
    const samples: Sample[] = []
    const degraded = await until(
      'the node degraded',
      async () => {
        const s = await readyz()
        samples.push(s)
        return s.status === 503 || s.body.status === 'degraded' ? s : undefined
      },
      30_000,
      250,
    )
    // Before, the first check after the kill answered 503.
    expect(`${degraded.status} ${degraded.status === 503 ? `${degraded.at - killedAt} ms after the kill: ${JSON.stringify(degraded.body)}` : ''}`).toBe('200 ')
    // (Not toMatchObject with expect.any: Bun's replaces the matched values in the object it reads.)
    const { degraded: what, ...checks } = degraded.body
    expect(checks).toMatchObject({ postgres: true, nats: true })
    expect(what.notAnswering.length).toBeGreaterThan(0)
    expect(Date.parse(what.notReadyAt) - Date.parse(what.since)).toBe(GRACE_S * 1000)

    const notReady = await until(
      'the node not ready once the grace is over',
      async () => {
        const s = await readyz()
        samples.push(s)
        return s.status === 503 ? s : undefined
      },
      GRACE_S * 1000 + 30_000,
      250,
    )
    // The statuses seen, run-length: `degraded x12, 503` (a check that finds everything answering
    // ends an outage: the survivor may answer the stream's info from its own copy for a while).
    const seen = samples.map((s) => (s.status === 503 ? '503' : s.body.status)).reduce<[string, number][]>((runs, st) => {
      const last = runs[runs.length - 1]
      if (last?.[0] === st) last[1]++
      else runs.push([st, 1])
      return runs
    }, [])
    const trace = seen.map(([st, n]) => (n > 1 ? `${st} x${n}` : st)).join(', ')
    console.log(`readiness after two of three servers were killed: degraded at ${degraded.at - killedAt} ms (${what.notAnswering.join('; ')}), 503 at ${notReady.at - killedAt} ms; seen: ${trace}`)
    // Never 503 before the grace of the outage it ends was over; 200 all along until then.
    expect(notReady.body.error).toMatchObject({ code: 'not_ready', details: { nats: true } })
    expect(notReady.body.error.message).toContain('FANFARE_READY_GRACE_S')
    const since = Date.parse(notReady.body.error.details.degradedSince)
    expect(since).toBeGreaterThanOrEqual(Date.parse(what.since))
    expect(notReady.at - since).toBeGreaterThanOrEqual(GRACE_S * 1000)
    expect(samples.filter((s) => s.at < since + GRACE_S * 1000).every((s) => s.status === 200)).toBe(true)
    await Promise.all([cluster.nodes[1].start(), cluster.nodes[2].start()])
    const restartedAt = Date.now()
    const back = await until('the node ready again', async () => {
      const s = await readyz()
      return s.body.status === 'ready' ? s : undefined
    }, 60_000, 250)
    expect(back.body).toEqual({ status: 'ready', postgres: true, nats: true, jetstream: true, changeFeeds: true })
    console.log(`ready again ${back.at - restartedAt} ms after the servers were started again`)
  }, 150_000)
})
