import { afterAll, describe, expect, test } from 'bun:test'
import { createTestEnv, type TestEnv } from '../../core/testing/env'
import { freePort, spawnProc, until, waitReady, WsClient, type Proc } from '../e2e/harness'

/** An OTLP/HTTP collector (http/json) that keeps every span it is sent. */
function startCollector() {
  const spans: { service: string; name: string; traceId: string; spanId: string; parentSpanId?: string; kind: number; links: { traceId: string }[]; attributes: Record<string, unknown> }[] = []
  const requests: string[] = []
  const server = Bun.serve({
    port: 0,
    hostname: '127.0.0.1',
    fetch: async (req) => {
      requests.push(`${req.method} ${new URL(req.url).pathname} ${req.headers.get('content-type')}`)
      const body = (await req.json()) as any
      for (const rs of body.resourceSpans ?? []) {
        const service = rs.resource?.attributes?.find((a: any) => a.key === 'service.name')?.value?.stringValue
        for (const ss of rs.scopeSpans ?? []) {
          for (const s of ss.spans ?? []) {
            const attributes: Record<string, unknown> = {}
            for (const a of s.attributes ?? []) attributes[a.key] = Object.values(a.value ?? {})[0]
            spans.push({ service, name: s.name, traceId: s.traceId, spanId: s.spanId, parentSpanId: s.parentSpanId || undefined, kind: s.kind, links: s.links ?? [], attributes })
          }
        }
      }
      return Response.json({})
    },
  })
  /**
   * A traced request's spans once its SERVER span (kind 2) and a Postgres statement's CLIENT span
   * (kind 3) have arrived: the first, and the trace's statements.
   */
  const serverAndStatements = async (traceId: string, what: string) => {
    const of = () => spans.filter((s) => s.traceId === traceId)
    await until(what, () => of().some((s) => s.kind === 2) && of().some((s) => s.kind === 3), 20_000)
    return { server: of().find((s) => s.kind === 2)!, statements: of().filter((s) => s.kind === 3) }
  }
  return { url: `http://127.0.0.1:${server.port}`, spans, requests, serverAndStatements, stop: () => server.stop(true) }
}

/** A new W3C trace id (32 hex digits) and span id (16). */
const traceIdHex = () => crypto.randomUUID().replaceAll('-', '')
const spanIdHex = () => traceIdHex().slice(0, 16)

/** A Prometheus text exposition as `name{labels}` -> value. */
async function scrape(url: string, init?: RequestInit): Promise<Map<string, number>> {
  const res = await fetch(url, init)
  expect(res.status).toBe(200)
  expect(res.headers.get('content-type')).toContain('text/plain')
  const values = new Map<string, number>()
  for (const line of (await res.text()).split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const at = line.lastIndexOf(' ')
    values.set(line.slice(0, at), Number(line.slice(at + 1)))
  }
  return values
}

/**
 * Real processes (an API node and a stream worker on the machine's Postgres and NATS) with traces
 * exported to a collector in this test, and metrics on their own ports.
 */
describe('observability across real processes', () => {
  let env: TestEnv
  const procs: Proc[] = []
  const collector = startCollector()
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop()))
    collector.stop()
    await env?.cleanup()
  })

  test('one trace follows an event from its request through JetStream, the worker and Postgres to the push; metrics count it all', async () => {
    env = await createTestEnv({ FANFARE_PARTITIONS: '2' })
    const port = freePort()
    const apiMetrics = freePort()
    const workerMetrics = freePort()
    const vars = {
      ...env.vars,
      PORT: String(port),
      HOST: '127.0.0.1',
      OTEL_EXPORTER_OTLP_ENDPOINT: collector.url,
      OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
      // Nothing is sampled on its own: only what a caller's sampled traceparent asks for.
      OTEL_TRACES_SAMPLER: 'parentbased_traceidratio',
      OTEL_TRACES_SAMPLER_ARG: '0',
    }
    procs.push(spawnProc('api', 'api/src/main.ts', { ...vars, FANFARE_METRICS_PORT: String(apiMetrics) }))
    procs.push(spawnProc('worker', 'stream-workers/src/main.ts', { ...vars, FANFARE_METRICS_PORT: String(workerMetrics) }))
    const base = `http://127.0.0.1:${port}`
    await waitReady(base, procs)

    const channel = 'leaderboard:arena'
    const ws = await WsClient.open(`ws://127.0.0.1:${port}/v1/ws`)
    ws.send({ op: 'subscribe', ref: 's', channel })
    await until('snapshot', () => ws.of(channel).length === 1)

    const post = (body: unknown, headers: Record<string, string> = {}) =>
      fetch(`${base}/v1/events`, {
        method: 'POST',
        headers: { authorization: `Bearer ${env.vars.FANFARE_INGEST_TOKEN}`, 'content-type': 'application/json', ...headers },
        body: JSON.stringify(body),
      })
    // An untraced event first: with the ratio at 0 it makes no spans anywhere.
    const untraced = { id: 'untraced-1', type: 'score.submitted', data: { board: 'arena', player: 'untraced', score: 1 } }
    expect((await post(untraced)).status).toBe(202)
    await until('the untraced update', () => ws.of(channel).length === 2)
    // Sent again: stored once, counted once (below).
    expect((await (await post(untraced)).json()).results[0].duplicate).toBe(true)

    const traceId = traceIdHex()
    const callerSpan = spanIdHex()
    const res = await post({ type: 'score.submitted', data: { board: 'arena', player: 'ann', score: 42 } }, { traceparent: `00-${traceId}-${callerSpan}-01` })
    expect(res.status).toBe(202)
    await until('the traced update', () => ws.of(channel).some((f) => f.op === 'update' && f.data.player === 'ann'))

    // The processes export every second.
    const names = ['POST /v1/events', 'fanfare.ingest', 'fanfare.batch leaderboards', 'postgres batch statement', 'fanfare.push']
    await until('spans of the trace', () => names.every((n) => collector.spans.some((s) => s.traceId === traceId && s.name === n)), 20_000)
    const of = (name: string) => collector.spans.find((s) => s.traceId === traceId && s.name === name)!
    const request = of('POST /v1/events')
    const ingest = of('fanfare.ingest')
    const batch = of('fanfare.batch leaderboards')
    const statement = of('postgres batch statement')
    const push = of('fanfare.push')
    // The request's SERVER span (kind 2), the caller's child; the ingest under it.
    expect(request).toMatchObject({
      service: 'fanfare-api',
      kind: 2,
      parentSpanId: callerSpan,
      attributes: { 'http.request.method': 'POST', 'http.route': '/v1/events', 'http.response.status_code': 202 },
    })
    expect(ingest).toMatchObject({ service: 'fanfare-api', parentSpanId: request.spanId, attributes: { 'fanfare.via': 'http' } })
    expect(batch.service).toBe('fanfare-workers')
    expect(batch.parentSpanId).toBe(ingest.spanId)
    expect(batch.links.map((l) => l.traceId)).toContain(traceId)
    expect(statement).toMatchObject({ service: 'fanfare-workers', parentSpanId: batch.spanId, attributes: { 'db.system.name': 'postgresql' } })
    expect(push).toMatchObject({ service: 'fanfare-api', parentSpanId: batch.spanId, attributes: { 'fanfare.recipients': 1 } })

    // A WebSocket publish frame carries its own traceparent (browsers cannot set headers on frames).
    const wsTrace = traceIdHex()
    const frameSpan = spanIdHex()
    const publisher = await WsClient.open(`ws://127.0.0.1:${port}/v1/ws?token=${env.vars.FANFARE_INGEST_TOKEN}`)
    publisher.send({ op: 'publish', ref: 'p1', event: { type: 'score.submitted', data: { board: 'arena', player: 'bo', score: 7 } }, traceparent: `00-${wsTrace}-${frameSpan}-01` })
    expect(await publisher.reply('p1')).toMatchObject({ op: 'ack' })
    publisher.close()
    await until('the frame\'s trace reaches the push', () => collector.spans.some((s) => s.traceId === wsTrace && s.name === 'fanfare.push'), 20_000)
    expect(collector.spans.find((s) => s.traceId === wsTrace && s.name === 'fanfare.ingest')).toMatchObject({ parentSpanId: frameSpan, attributes: { 'fanfare.via': 'ws' } })

    // A traced REST read: its SERVER span named by the route, its Postgres statements as CLIENT
    // spans (kind 3) under it, with the parameterized SQL and never the values.
    const readTrace = traceIdHex()
    const readCaller = spanIdHex()
    const read = await fetch(`${base}/v1/leaderboards/arena?limit=5`, { headers: { traceparent: `00-${readTrace}-${readCaller}-01` } })
    expect(read.status).toBe(200)
    const { server, statements } = await collector.serverAndStatements(readTrace, 'the read\'s spans')
    expect(server).toMatchObject({
      service: 'fanfare-api',
      name: 'GET /v1/leaderboards/:board',
      parentSpanId: readCaller,
      attributes: { 'http.route': '/v1/leaderboards/:board', 'http.response.status_code': 200, 'url.path': '/v1/leaderboards/arena' },
    })
    for (const st of statements) {
      expect(st).toMatchObject({ parentSpanId: server.spanId, attributes: { 'db.system.name': 'postgresql', 'db.operation.name': 'SELECT' } })
      expect(String(st.attributes['db.query.text'])).not.toContain('arena')
    }
    expect(statements.some((st) => st.name === 'SELECT leaderboard_entries' || st.name === 'SELECT leaderboards')).toBe(true)

    // A traced subscribe (the frame carries its traceparent): a SERVER span of its own, its snapshot
    // read as CLIENT spans under it.
    const subTrace = traceIdHex()
    const subCaller = spanIdHex()
    const viewer = await WsClient.open(`ws://127.0.0.1:${port}/v1/ws`)
    viewer.send({ op: 'subscribe', ref: 't', channel: 'leaderboard:traced', traceparent: `00-${subTrace}-${subCaller}-01` })
    await until('the traced snapshot', () => viewer.of('leaderboard:traced').length === 1)
    const { server: subscribe, statements: reads } = await collector.serverAndStatements(subTrace, 'the subscribe\'s spans')
    expect(subscribe).toMatchObject({
      service: 'fanfare-api',
      name: 'fanfare.subscribe',
      parentSpanId: subCaller,
      attributes: { 'fanfare.channel': 'leaderboard:traced', 'fanfare.channel.kind': 'leaderboard', 'fanfare.resume': false },
    })
    // The snapshot's statements run in one transaction (its version and data together): spanned too.
    for (const st of reads) expect(st).toMatchObject({ parentSpanId: subscribe.spanId, attributes: { 'db.system.name': 'postgresql' } })
    expect(reads.some((st) => st.name === 'SELECT leaderboard_entries' || st.name === 'SELECT leaderboards')).toBe(true)

    // The untraced event made no trace of its own, nor did the untraced requests (the WebSocket
    // upgrades, the duplicate), the untraced subscribe, or the node's own statements outside a request.
    expect(new Set(collector.spans.map((s) => s.traceId))).toEqual(new Set([traceId, wsTrace, readTrace, subTrace]))
    expect(collector.requests.every((r) => r.startsWith('POST /v1/traces application/json'))).toBe(true)

    // Metrics: the API node's on its own port (no credential) and behind admin:read on its API port.
    const api = await scrape(`http://127.0.0.1:${apiMetrics}/metrics`)
    expect(api.get('fanfare_events_ingested_total{type="score.submitted",via="http"}')).toBe(2)
    expect(api.get('fanfare_events_ingested_total{type="score.submitted",via="ws"}')).toBe(1)
    expect(api.get('fanfare_ingest_duration_seconds_count')).toBe(4)
    expect(api.get('fanfare_ws_connections')).toBe(2)
    expect(api.get('fanfare_ws_subscriptions')).toBe(2)
    expect(api.get('fanfare_channels')).toBe(2)
    expect(api.get('fanfare_ws_messages_sent_total{op="snapshot"}')).toBe(2)
    expect(api.get('fanfare_ws_messages_sent_total{op="update"}')).toBe(3)
    expect(api.get('fanfare_ws_messages_sent_total{op="ack"}')).toBe(1)
    expect(api.get('fanfare_commit_to_push_seconds_count{kind="leaderboard"}')).toBe(3)
    expect(api.get('fanfare_event_to_push_seconds_count{kind="leaderboard"}')).toBe(3)
    // Event stored -> pushed takes at least commit -> pushed.
    expect(api.get('fanfare_event_to_push_seconds_sum{kind="leaderboard"}')!).toBeGreaterThanOrEqual(api.get('fanfare_commit_to_push_seconds_sum{kind="leaderboard"}')!)

    expect((await fetch(`${base}/metrics`)).status).toBe(401)
    expect((await fetch(`${base}/metrics`, { headers: { authorization: `Bearer ${env.vars.FANFARE_INGEST_TOKEN}` } })).status).toBe(403)
    const viaApi = await scrape(`${base}/metrics`, { headers: { authorization: `Bearer ${env.vars.FANFARE_ADMIN_TOKEN}` } })
    expect(viaApi.get('fanfare_events_ingested_total{type="score.submitted",via="http"}')).toBe(2)

    const worker = await scrape(`http://127.0.0.1:${workerMetrics}/metrics`)
    expect(worker.get('fanfare_batch_events_sum')).toBe(3)
    expect(worker.get('fanfare_batch_duration_seconds_count{projection="leaderboards"}')).toBeGreaterThanOrEqual(1)
    const lags = [...worker].filter(([k]) => k.startsWith('fanfare_projection_lag_events{'))
    // Every projection on both partitions, caught up.
    expect(lags.length).toBeGreaterThanOrEqual(1)
    expect(lags.every(([, v]) => v === 0)).toBe(true)

    ws.close()
    viewer.close()
    await until('the disconnects counted', async () => (await scrape(`http://127.0.0.1:${apiMetrics}/metrics`)).get('fanfare_ws_disconnects_total{code="1005"}') === 3)
    for (const p of procs) expect(await p.stop()).toBe(0)
  }, 120_000)
})
