import { afterAll, describe, expect, test } from 'bun:test'
import { jetstreamManager } from '@nats-io/jetstream'
import { connect, type NatsConnection } from '@nats-io/transport-node'
import { loadConfig } from '../../core/config'
import { connectPostgres, type Database } from '../../core/db/client'
import { createLogger } from '../../core/logger'
import { ensureStreams } from '../../core/nats'
import { startApi, type RunningApi } from '../../api/src/server'
import { until } from '../e2e/harness'
import { apiAt, postEvents, privateNatsDeployment, scoreEvent, type PrivateNatsDeployment } from './support'

/**
 * A nats-server killed (SIGKILL, as in a crash) and started again on its store: a client resending,
 * within the de-duplication window, a batch that was acknowledged before the crash, and one whose
 * request the crash cut off (503, some maybe stored), gets every stored event back as a duplicate
 * with its first sequence, and the stream holds each event once (README "What Fanfare promises" 1).
 * A real API node in this process, on a nats-server of its own.
 */
describe('resends across a nats-server crash', () => {
  let d: PrivateNatsDeployment | undefined
  let node: { api: RunningApi; nc: NatsConnection; database: Database } | undefined
  afterAll(async () => {
    await node?.api.stop().catch(() => {})
    await node?.nc.close().catch(() => {})
    await node?.database.close().catch(() => {})
    await d?.close()
  })

  test('acknowledged and cut-off batches resent after the restart are stored once', async () => {
    d = await privateNatsDeployment('nats-crash-resend', { FANFARE_PARTITIONS: '2', FANFARE_KEY_OPS_PER_SECOND: '10000000', FANFARE_KEY_OPS_BURST: '10000000' })
    const vars = { ...d.vars, PORT: '0' }
    const config = loadConfig(vars)
    const nc = await connect({ servers: d.nats.url, maxReconnectAttempts: -1, reconnectTimeWait: 200 })
    await ensureStreams(nc, config)
    const database = await connectPostgres(config.DATABASE_URL!, { max: 2 })
    node = { api: await startApi({ config, db: database.db, nc, logger: createLogger('silent') }), nc, database }
    const api = apiAt(node.api.port, vars)
    const batch = (n: number) => Array.from({ length: 50 }, (_, i) => scoreEvent(`crash-${n}-${i}@x`, 'b', `p${i}`, n))

    // Four lanes post batches back to back; the server is killed while they do, so requests are
    // cut off at every stage: answered 202 just before, stored but unanswered (503), not stored.
    type Outcome = { n: number; status: number; body: any }
    const outcomes: Outcome[] = []
    let next = 0
    let crashed = false
    const lane = async () => {
      while (!crashed) {
        const n = next++
        const r = await postEvents(api, batch(n), 10_000)
        outcomes.push({ n, ...r })
        if (r.status !== 202) return
      }
    }
    const lanes = Promise.all([lane(), lane(), lane(), lane()])
    await until('some batches acknowledged', () => outcomes.filter((o) => o.status === 202).length >= 20, 20_000)
    await d.nats.kill()
    crashed = true
    await lanes
    for (const o of outcomes) expect([202, 503]).toContain(o.status)
    await d.nats.start()

    const first = outcomes.find((o) => o.status === 202)!
    const resent = await until('a resend acknowledged after the restart', async () => {
      const r = await postEvents(api, batch(first.n), 10_000)
      return r.status === 202 ? r : undefined
    }, 30_000, 200)
    expect(resent.body.results).toEqual(first.body.results.map((r: object) => ({ ...r, duplicate: true })))
    let storedDespite503 = 0
    for (const o of outcomes) {
      const again = await postEvents(api, batch(o.n), 10_000)
      expect(again.status).toBe(202)
      // Whatever the first answer said was stored comes back a duplicate with its sequence.
      // A 503 refused before any publish (NATS already known to be down) lists no results: it said nothing was stored.
      const said: { id: string; seq?: number; stored?: boolean }[] = o.status === 202 ? o.body.results : (o.body.error.details?.results ?? [])
      for (const [i, f] of said.entries()) {
        if (o.status === 202 || f.stored) expect(again.body.results[i]).toEqual({ id: f.id, seq: f.seq, duplicate: true })
      }
      if (o.status !== 202) storedDespite503 += again.body.results.filter((x: { duplicate: boolean }) => x.duplicate).length
    }
    // Every event once in the stream.
    const jsm = await jetstreamManager(nc)
    expect((await jsm.streams.info(config.FANFARE_STREAM)).state.messages).toBe(outcomes.length * 50)
    console.log(`nats crash: ${outcomes.length} requests, ${outcomes.filter((o) => o.status !== 202).length} answered 503; ${storedDespite503} events of those had been stored (resends de-duplicated)`)
  }, 90_000)
})
