import { afterAll, describe, expect, test } from 'bun:test'
import { jetstream, jetstreamManager } from '@nats-io/jetstream'
import { connect, type NatsConnection } from '@nats-io/transport-node'
import { until, WsClient, type Proc } from '../e2e/harness'
import { BoardView, configureBoard, configuredVersion, expectAppliedOnce, postEvents, privateNatsDeployment, readModel, scoreEvent, startNodes, stopCleanly, sumsOf, type PrivateNatsDeployment, type ScoreEvent } from '../cluster/support'

const PLAYERS = 20

/**
 * JetStream out of storage (the server's max_file_store reached, here by another stream of the
 * same server): ingest answers 503 `storage_full` at once, naming the cause (never a 202 for an
 * event not stored, never a hang, nothing stored), workers keep their partitions' progress, and
 * once space is freed the refused batches resent with the same ids are stored, every acknowledged
 * event is applied exactly once, and a subscriber has seen every change in order.
 */
describe('JetStream storage exhausted', () => {
  let d: PrivateNatsDeployment | undefined
  let nc: NatsConnection | undefined
  const procs: Proc[] = []
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop('SIGKILL')))
    await nc?.close()
    await d?.close()
  })

  test('503 storage_full while full; every acknowledged event applied once after space frees', async () => {
    d = await privateNatsDeployment('js-full', { FANFARE_PARTITIONS: '2', FANFARE_LEASE_TTL_MS: '2000' }, { jetstream: 'max_file_store: 4MB' })
    const { nats, env, api, port } = d
    const { workerProc } = await startNodes(d, procs)
    const board = `full_${Math.random().toString(36).slice(2, 8)}`
    const channel = `leaderboard:${board}`
    await configureBoard(api, board, 'sum')
    const view = new BoardView(await WsClient.open(`ws://127.0.0.1:${port}/v1/ws`))
    view.client.send({ op: 'subscribe', ref: 's', channel })
    await until('the snapshot', () => view.client.of(channel).length > 0)

    let n = 0
    const acked: ScoreEvent[] = []
    const batchOf = () => Array.from({ length: PLAYERS }, (_, p) => scoreEvent(`${board}-${n++}`, board, `p${p}`, 1 + (n % 5)))
    const post = async (batch: ScoreEvent[]) => {
      const startedAt = Date.now()
      const res = await postEvents(api, batch, 10_000)
      if (res.status === 202) acked.push(...batch)
      return { ...res, ms: Date.now() - startedAt }
    }
    for (let i = 0; i < 3; i++) expect((await post(batchOf())).status).toBe(202)

    // Another stream of the server takes the rest of its storage.
    nc = await connect({ servers: nats.url })
    const jsm = await jetstreamManager(nc)
    await jsm.streams.add({ name: 'FILLER', subjects: ['filler.>'] })
    const js = jetstream(nc)
    const chunk = new Uint8Array(64 * 1024)
    for (;;) {
      const full = await js.publish('filler.x', chunk).then(() => false, (err) => /insufficient resources/.test(String(err)) || Promise.reject(err))
      if (full) break
    }

    const refused: ScoreEvent[][] = []
    for (let i = 0; i < 5; i++) {
      const batch = batchOf()
      const res = await post(batch)
      expect(res.status).toBe(503)
      expect(res.body.error.code).toBe('storage_full')
      expect(res.body.error.message).toContain('storage')
      expect(res.body.error.details.results.map((r: { stored: boolean }) => r.stored)).toEqual(batch.map(() => false))
      expect(res.ms).toBeLessThan(4000) // JetStream's refusal is answered as it comes, not after the 5 s publish timeout
      refused.push(batch)
    }

    // What an operator alerts on: events refused, by the code clients got.
    const metrics = await (await fetch(`${api.baseUrl}/metrics`, { headers: { authorization: `Bearer ${api.adminToken}` } })).text()
    expect(metrics).toContain(`fanfare_events_refused_total{code="storage_full"} ${refused.length * PLAYERS}`)

    await jsm.streams.delete('FILLER')
    for (const batch of refused) {
      const res = await until('a refused batch stored after space freed', async () => {
        const r = await post(batch)
        return r.status === 202 ? r : undefined
      }, 20_000, 250)
      // Nothing of a refused batch had been stored.
      expect(res.body.results.filter((r: { duplicate: boolean }) => r.duplicate)).toEqual([])
    }
    for (let i = 0; i < 3; i++) expect((await post(batchOf())).status).toBe(202)

    const oracle = sumsOf(acked)
    const rm = readModel(env.vars.DATABASE_URL)
    try {
      await expectAppliedOnce(rm, board, acked, 30_000, workerProc)
    } finally {
      await rm.close()
    }
    // The subscriber has every change, in order (BoardView throws on a gap), or was told to re-sync.
    await until(`the subscriber at version ${configuredVersion(acked.length)}`, () => view.catchUp(channel).version === configuredVersion(acked.length), 20_000)
    expect(Object.fromEntries(view.board)).toEqual(Object.fromEntries(oracle))
    await stopCleanly(...procs)
  }, 120_000)
})
