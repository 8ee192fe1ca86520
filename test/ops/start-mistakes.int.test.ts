import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { jetstreamManager } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import { connectNats, ensureStreams, topology } from '../../core/nats'
import { loadConfig } from '../../core/config'
import { createTestEnv, TEST_NATS_URL, type TestEnv } from '../../core/testing/env'
import { freePort, runUntilExit, spawnProc, until, waitReady } from '../e2e/harness'

/**
 * An operator's slips when starting one more node of a running deployment: each stops the process
 * at once with a message naming the variable to fix, and leaves nothing behind. Before, a
 * misspelt FANFARE_STREAM on an API node said only "JetStreamApiError: subjects overlap with an
 * existing stream", and a FANFARE_METRICS_PORT already taken said Bun's "Failed to start server.
 * Is port N in use?", naming neither variable. A misspelt optional variable cannot stop a process
 * (it is not read), but it must not pass unseen: the setting would keep its default.
 */
describe('a node started with a wrong variable', () => {
  let env: TestEnv
  let nc: NatsConnection
  let busy: ReturnType<typeof Bun.serve>
  beforeAll(async () => {
    env = await createTestEnv({ FANFARE_PARTITIONS: '4' })
    nc = await connectNats(TEST_NATS_URL, 'start-mistakes-test')
    // The deployment's streams, as its first node made them.
    await ensureStreams(nc, env.config)
    busy = Bun.serve({ port: 0, hostname: '127.0.0.1', fetch: () => new Response('someone else') })
  })
  afterAll(async () => {
    busy?.stop(true)
    await nc?.close()
    await env?.cleanup()
  })

  test('an API node whose FANFARE_STREAM is misspelt names the stream that takes the events, and creates none', async () => {
    const typo = `${env.vars.FANFARE_STREAM}X`
    const r = await runUntilExit('api/src/main.ts', { ...env.vars, FANFARE_STREAM: typo }, 30_000)
    expect(r.code).toBe(1)
    expect(r.output).toContain(`FANFARE_STREAM is ${typo} but stream ${env.vars.FANFARE_STREAM} already takes the events on ${env.vars.FANFARE_SUBJECT_PREFIX}.ev.>`)
    expect(r.output).toContain(`set FANFARE_STREAM=${env.vars.FANFARE_STREAM} on every process`)
    const names: string[] = []
    for await (const name of (await jetstreamManager(nc)).streams.names()) names.push(name)
    expect(names.filter((n) => n.startsWith(typo))).toEqual([])
    expect(topology(loadConfig({ ...env.vars, FANFARE_STREAM: typo })).eventStream).toBe(typo)
  }, 40_000)

  for (const [who, entry, name] of [
    ['an API node', 'api/src/main.ts', 'api'],
    ['a stream-worker process', 'stream-workers/src/main.ts', 'stream-workers'],
  ] as const) {
    test(`${who} whose FANFARE_METRICS_PORT is taken says which variable to change, on one line`, async () => {
      const r = await runUntilExit(entry, { ...env.vars, FANFARE_METRICS_PORT: String(busy.port) }, 30_000)
      expect(r.code).toBe(1)
      // The message alone: a stack trace under it only hid it.
      expect(r.output.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('{'))).toEqual([
        `fanfare ${name}: failed to start: ListenFailed: cannot listen on 127.0.0.1:${busy.port}: the port is in use by another process (another Fanfare?): stop it, or set FANFARE_METRICS_PORT to a free port`,
      ])
    }, 40_000)
  }

  test('a misspelt variable is named in a warning, with the variable meant', async () => {
    const port = freePort()
    const vars = { ...env.vars, FANFARE_INGEST_MAX_INFLIGHT: '500', LOG_LEVEL: 'warn', FANFARE_LOG_FORMAT: 'json' }
    const api = spawnProc('api', 'api/src/main.ts', { ...vars, PORT: String(port), HOST: '127.0.0.1' })
    const worker = spawnProc('worker', 'stream-workers/src/main.ts', vars)
    try {
      await waitReady(`http://127.0.0.1:${port}`, [api, worker])
      for (const p of [api, worker]) {
        const line = await until(`${p.name}'s warning`, () => p.output().split('\n').find((l) => l.includes('"variable":"FANFARE_INGEST_MAX_INFLIGHT"')), 10_000)
        expect(JSON.parse(line)).toMatchObject({ level: 40, meant: 'FANFARE_INGEST_MAX_IN_FLIGHT', msg: 'FANFARE_INGEST_MAX_INFLIGHT is not a Fanfare variable and is ignored: did you mean FANFARE_INGEST_MAX_IN_FLIGHT?' })
      }
    } finally {
      await api.stop('SIGKILL')
      await worker.stop('SIGKILL')
    }
  }, 40_000)
})
