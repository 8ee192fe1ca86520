import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream'
import { connect, type NatsConnection } from '@nats-io/transport-node'
import { connectPostgres, type Database } from '../../core/db/client'
import { createLogger, type Logger } from '../../core/logger'
import type { Metrics } from '../../core/metrics'
import { ensureStreams, topology } from '../../core/nats'
import type { RebuildJob } from '../../core/rebuild-jobs'
import { createTestEnv, TEST_NATS_URL, type TestEnv } from '../../core/testing/env'
import { until } from '../../core/testing/wait'
import { createApp, type App } from './app'
import type { ApiDeps } from './deps'
import { startSecurity } from './auth/security'
import { startApi, type RunningApi } from './server'
import type { HistoryReader } from './realtime/history'

/** An app over a fresh test database and stream, with helpers for requests. Test-only. */
export type ApiHarness = {
  env: TestEnv
  database: Database
  nc: NatsConnection
  jsm: JetStreamManager
  app: App
  deps: ApiDeps
  ingestToken: string
  adminToken: string
  /** Sends a request in-process; `body` objects are sent as JSON. */
  call: (method: string, path: string, opts?: { token?: string; body?: unknown; headers?: Record<string, string> }) => Promise<{ status: number; json: any }>
  /** Messages currently in the event stream. */
  streamCount: () => Promise<number>
  close: () => Promise<void>
}

export async function createHarness(overrides: Record<string, string> = {}, extra: Partial<ApiDeps> = {}): Promise<ApiHarness> {
  const env = await createTestEnv(overrides)
  const database = await connectPostgres(env.vars.DATABASE_URL, { max: 4 })
  // The machine's NATS unless `overrides` name another (a test's private nats-server).
  const nc = await connect({ servers: env.vars.NATS_URL })
  const jsm = await ensureStreams(nc, env.config)
  const logger = createLogger('silent')
  const security = extra.security ?? (await startSecurity({ config: env.config, db: database.db, nc, logger }))
  const deps: ApiDeps = { config: env.config, db: database.db, nc, logger, ...extra, security }
  const app = createApp(deps)
  const call: ApiHarness['call'] = async (method, path, opts = {}) => {
    const headers: Record<string, string> = { ...opts.headers }
    if (opts.token) headers.authorization = `Bearer ${opts.token}`
    let body: string | undefined
    if (opts.body !== undefined) {
      body = typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body)
      headers['content-type'] ??= 'application/json'
    }
    const res = await app.handle(new Request(`http://localhost${path}`, { method, headers, body }))
    const text = await res.text()
    let json: unknown
    try {
      json = JSON.parse(text)
    } catch {
      json = text
    }
    return { status: res.status, json }
  }
  return {
    env,
    database,
    nc,
    jsm,
    app,
    deps,
    ingestToken: env.vars.FANFARE_INGEST_TOKEN,
    adminToken: env.vars.FANFARE_ADMIN_TOKEN,
    call,
    streamCount: async () => (await jsm.streams.info(topology(env.config).eventStream)).state.messages,
    close: async () => {
      await security.stop()
      await nc.close().catch(() => {})
      await database.close()
      await env.cleanup()
    },
  }
}

/**
 * Polls GET /admin/projections/:name/rebuild (every 100 ms, up to `timeoutMs`) until the job is in
 * `state`, and returns it; a job that failed meanwhile throws with its error (unless `state` is
 * 'failed').
 */
export const waitRebuild = (h: Pick<ApiHarness, 'call' | 'adminToken'>, name: string, state: RebuildJob['state'] = 'done', timeoutMs = 40_000) =>
  until(
    `rebuild of ${name} to be ${state}`,
    async () => {
      const r = await h.call('GET', `/admin/projections/${name}/rebuild`, { token: h.adminToken })
      if (r.json?.state === 'failed' && state !== 'failed') throw new Error(`rebuild failed: ${r.json.error}`)
      return r.json?.state === state ? (r.json as RebuildJob) : undefined
    },
    timeoutMs,
    100,
  )

/** A JetStream manager on a fresh connection, for reading what the API published. */
export async function freshJsm(): Promise<{ nc: NatsConnection; jsm: JetStreamManager }> {
  const nc = await connect({ servers: TEST_NATS_URL })
  return { nc, jsm: await jetstreamManager(nc) }
}

/** A real API node (startApi, listening on 127.0.0.1) over a fresh test env. Test-only. */
export type TestNode = {
  env: TestEnv
  database: Database
  nc: NatsConnection
  api: RunningApi
  /** http://127.0.0.1:<port> */
  base: string
  /** ws://127.0.0.1:<port>/v1/ws */
  wsUrl: string
  /** Messages currently in the event stream. */
  streamCount: () => Promise<number>
  /** The stored events, in stream order (for small streams: one request per message). */
  streamEvents: () => Promise<{ id: string; type: string }[]>
  close: () => Promise<void>
}

/**
 * `opts`: the node's logger (default: silent) and metrics, for a test that reads them, and a
 * wrapper of its history reader (see startRealtime).
 */
export async function startTestNode(
  overrides: Record<string, string> = {},
  opts: { logger?: Logger; metrics?: Metrics; wrapHistory?: (read: HistoryReader) => HistoryReader } = {},
): Promise<TestNode> {
  const env = await createTestEnv({ PORT: '0', HOST: '127.0.0.1', ...overrides })
  const database = await connectPostgres(env.vars.DATABASE_URL, { max: 4 })
  const nc = await connect({ servers: TEST_NATS_URL })
  const jsm = await ensureStreams(nc, env.config)
  const api = await startApi({ config: env.config, db: database.db, nc, logger: opts.logger ?? createLogger('silent'), metrics: opts.metrics, wrapHistory: opts.wrapHistory })
  return {
    env,
    database,
    nc,
    api,
    base: `http://127.0.0.1:${api.port}`,
    wsUrl: `ws://127.0.0.1:${api.port}/v1/ws`,
    streamCount: async () => (await jsm.streams.info(topology(env.config).eventStream)).state.messages,
    streamEvents: async () => {
      const stream = topology(env.config).eventStream
      const { state } = await jsm.streams.info(stream)
      const events: { id: string; type: string }[] = []
      for (let seq = state.first_seq; seq <= state.last_seq && state.messages > 0; seq++) {
        const m = await jsm.streams.getMessage(stream, { seq }).catch(() => undefined)
        if (m) events.push(m.json())
      }
      return events
    },
    close: async () => {
      await api.stop()
      await nc.close().catch(() => {})
      await database.close()
      await env.cleanup()
    },
  }
}

/** The request headers of a WebSocket upgrade, for `fetch`: a refused upgrade answers with a plain HTTP response. */
export const UPGRADE_HEADERS = { upgrade: 'websocket', connection: 'Upgrade', 'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==', 'sec-websocket-version': '13' }
