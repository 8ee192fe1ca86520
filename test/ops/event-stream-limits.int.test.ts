import { afterAll, describe, expect, test } from 'bun:test'
import { jetstreamManager } from '@nats-io/jetstream'
import { connect, type NatsConnection } from '@nats-io/transport-node'
import { topology } from '../../core/nats'
import { createTestEnv, TEST_NATS_URL, type TestEnv } from '../../core/testing/env'
import { spawnProc, waitReady, type Proc } from '../e2e/harness'
import { configureBoard, configuredVersion, nodeVars, postEvents, readModel, scoreEvent, stopCleanly, sumsOf, untilBoardEquals, type ScoreEvent } from '../cluster/support'

/**
 * An operator caps the event stream (`nats stream edit --max-msgs`, `--max-bytes`: a common way to
 * bound a disk). With JetStream's default discard policy (old) the stream then deleted its oldest
 * events to take new ones: events acknowledged 202 vanished before the workers applied them,
 * without an error anywhere. The event stream discards new instead: past the cap ingest answers
 * 503 `storage_full` and every event acknowledged is applied.
 */
describe('event stream capped by an operator', () => {
  let env: TestEnv | undefined
  let nc: NatsConnection | undefined
  const procs: Proc[] = []
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop('SIGKILL')))
    await nc?.close()
    await env?.cleanup()
  })

  test('past the cap events are refused, never acknowledged and then deleted', async () => {
    env = await createTestEnv({ FANFARE_PARTITIONS: '2', FANFARE_LEASE_TTL_MS: '2000' })
    const { vars, api } = nodeVars(env.vars)
    procs.push(spawnProc('api', 'api/src/main.ts', vars))
    await waitReady(api.baseUrl, procs)
    const board = 'cap'
    await configureBoard(api, board, 'sum')

    // The operator's edit changes the cap only, as `nats stream edit` does.
    nc = await connect({ servers: TEST_NATS_URL })
    const jsm = await jetstreamManager(nc)
    const stream = topology(env.config).eventStream
    const { config } = await jsm.streams.info(stream)
    await jsm.streams.update(stream, { ...config, max_msgs: 50 })

    // No worker runs yet: nothing is consumed while the events pile up.
    const acked: ScoreEvent[] = []
    const refusals: string[] = []
    for (let i = 0; i < 10; i++) {
      const batch = Array.from({ length: 10 }, (_, p) => scoreEvent(`cap-${i}-${p}`, board, `p${p}`, 1 + i))
      const res = await postEvents(api, batch)
      if (res.status === 202) acked.push(...batch)
      else refusals.push(`${res.status} ${res.body.error.code}`)
    }
    expect(acked.length).toBe(50)
    expect(new Set(refusals)).toEqual(new Set(['503 storage_full']))

    procs.push(spawnProc('worker', 'stream-workers/src/main.ts', vars))
    const oracle = sumsOf(acked)
    const rm = readModel(env.vars.DATABASE_URL)
    try {
      await untilBoardEquals(rm, board, oracle, 30_000)
      expect(await rm.version(`leaderboard:${board}`)).toBe(configuredVersion(acked.length))
    } finally {
      await rm.close()
    }
    await stopCleanly(...procs)
  }, 90_000)
})
