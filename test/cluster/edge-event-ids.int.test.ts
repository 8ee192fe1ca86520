import { afterAll, describe, expect, test } from 'bun:test'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { jetstreamManager } from '@nats-io/jetstream'
import { connect, type NatsConnection } from '@nats-io/transport-node'
import { connectPostgres, type Database } from '../../core/db/client'
import { loadConfig } from '../../core/config'
import { createLogger } from '../../core/logger'
import { ensureStreams } from '../../core/nats'
import { createTestEnv, type TestEnv } from '../../core/testing/env'
import { startApi, type RunningApi } from '../../api/src/server'
import { freePort, until } from '../e2e/harness'
import { privateNats, type PrivateNats } from './private-nats'
import { apiAt, postEvents, scoreEvent } from './support'

const EDGE = 'edge-ids'

/**
 * An edge's events reach the hub's event stream by sourcing, which keeps their Nats-Msg-Id. On
 * nats-server 2.9 a sourced message the hub's window takes for a duplicate stalls that source for
 * the whole window (docs/design.md, Edge sites), so an edge's msg ids must never equal one the hub
 * stores itself. An event id may hold '@': a publisher's hub event `m1@<edge>` and its edge event
 * `m1` must still be two msg ids, or one caller with ids of its choosing stalls every event of that
 * edge site for FANFARE_DEDUP_WINDOW_MS (2 minutes by default, up to 7 days).
 * Two real API nodes (hub and edge) in this process, a hub and a leaf nats-server of their own.
 */
describe('event ids at an edge site', () => {
  let env: TestEnv | undefined
  let hub: PrivateNats | undefined
  let edge: PrivateNats | undefined
  const nodes: { api: RunningApi; nc: NatsConnection; database: Database }[] = []
  const dir = mkdtempSync(join(tmpdir(), 'fanfare-edge-ids-'))
  afterAll(async () => {
    for (const n of nodes) {
      await n.api.stop().catch(() => {})
      await n.nc.close().catch(() => {})
      await n.database.close().catch(() => {})
    }
    await edge?.stop()
    await hub?.stop()
    await env?.cleanup()
    rmSync(dir, { recursive: true, force: true })
  })

  const startNode = async (vars: Record<string, string>) => {
    const config = loadConfig(vars)
    const nc = await connect({ servers: config.NATS_URL! })
    await ensureStreams(nc, config)
    const database = await connectPostgres(config.DATABASE_URL!, { max: 2 })
    const api = await startApi({ config, db: database.db, nc, logger: createLogger('silent') })
    nodes.push({ api, nc, database })
    return apiAt(api.port, vars)
  }

  test("a hub event whose id ends in '@<edge>' and the same caller's edge event without it are two events; the edge's events keep reaching the hub", async () => {
    env = await createTestEnv({ FANFARE_PARTITIONS: '2' })
    const prefix = env.config.FANFARE_SUBJECT_PREFIX
    const leafPort = freePort()
    hub = privateNats({ port: freePort(), storeDir: join(dir, 'hub'), domain: 'hub', leafPort })
    edge = privateNats({ port: freePort(), storeDir: join(dir, 'edge'), domain: EDGE, remote: { url: `nats-leaf://127.0.0.1:${leafPort}`, deny: [`${prefix}.ev.>`] } })
    await hub.start()
    await edge.start()
    const base = { ...env.vars, PORT: '0', HOST: '127.0.0.1' }
    const hubApi = await startNode({ ...base, NATS_URL: hub.url, FANFARE_EDGE_DOMAINS: EDGE })
    const edgeApi = await startNode({ ...base, NATS_URL: edge.url, FANFARE_EDGE_DOMAIN: EDGE, FANFARE_HUB_DOMAIN: 'hub' })

    const hubNc = await connect({ servers: hub.url })
    const hubJsm = await jetstreamManager(hubNc)
    const stream = env.config.FANFARE_STREAM
    const hubEvents = async () => {
      const { state } = await hubJsm.streams.info(stream)
      const ids: string[] = []
      for (let seq = state.first_seq; seq <= state.last_seq && state.messages > 0; seq++) {
        const m = await hubJsm.streams.getMessage(stream, { seq }).catch(() => undefined)
        if (m) ids.push(m.json<{ id: string }>().id)
      }
      return ids
    }
    try {
      // The link works: an edge event reaches the hub's stream.
      const first = await postEvents(edgeApi, [scoreEvent('warm-up', 'b', 'p0', 1)])
      expect(first.status).toBe(202)
      await until('the edge event sourced into the hub', async () => (await hubEvents()).includes('warm-up'), 20_000, 100)

      // The same caller (the ingest token): `m1@edge-ids` at the hub, then `m1` at the edge.
      const atHub = await postEvents(hubApi, [scoreEvent(`m1@${EDGE}`, 'b', 'p1', 2)])
      expect(atHub.body.results).toEqual([{ id: `m1@${EDGE}`, seq: expect.any(Number), duplicate: false }])
      const atEdge = await postEvents(edgeApi, [scoreEvent('m1', 'b', 'p2', 3)])
      expect(atEdge.body.results).toEqual([{ id: 'm1', seq: expect.any(Number), duplicate: false }])
      const later = await postEvents(edgeApi, [scoreEvent('m2', 'b', 'p3', 4)])
      expect(later.status).toBe(202)
      // Each site still de-duplicates its own resends.
      expect((await postEvents(edgeApi, [scoreEvent('m1', 'b', 'p2', 3)])).body.results).toEqual([{ id: 'm1', seq: atEdge.body.results[0].seq, duplicate: true }])
      expect((await postEvents(hubApi, [scoreEvent(`m1@${EDGE}`, 'b', 'p1', 2)])).body.results).toEqual([{ id: `m1@${EDGE}`, seq: atHub.body.results[0].seq, duplicate: true }])

      // Both reach the hub's stream within seconds, in the edge's order, each once (the window
      // is 2 minutes: a stalled source would hold them that long).
      const ids = await until('the edge events after m1 sourced into the hub', async () => {
        const ids = await hubEvents()
        return ids.includes('m2') ? ids : undefined
      }, 15_000, 100)
      expect([...ids].sort()).toEqual(['m1', `m1@${EDGE}`, 'm2', 'warm-up'])
      expect(ids.indexOf('m1')).toBeLessThan(ids.indexOf('m2'))
    } finally {
      await hubNc.close()
    }
  }, 60_000)
})
