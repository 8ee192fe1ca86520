import { describe, expect, test } from 'bun:test'
import { context, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api'
import type { ReadableSpan, SpanExporter } from '@opentelemetry/sdk-trace'
import { loadConfig } from './config'
import { contextOfRequest, contextOfTraceparent, nameRequestSpan, natsHeadersOf, samplerOf, serveTraced, startTracing, statementSpan, tracer, tracesUrlOf } from './tracing'

/** Spans kept in memory: what `startTracing` exported once it is stopped. */
function memoryExporter() {
  const spans: ReadableSpan[] = []
  const exporter: SpanExporter = {
    export: (batch, done) => {
      spans.push(...batch)
      done({ code: 0 })
    },
    shutdown: async () => {},
  }
  return { spans, exporter }
}

/** A driver's pending statement as postgres.js and Bun SQL make it: lazy, run when awaited, `.values()` on itself. */
class Pending implements PromiseLike<string> {
  runs = 0
  constructor(private readonly outcome: () => string) {}
  values() {
    return this
  }
  then<A = string, B = never>(ok?: ((v: string) => A | PromiseLike<A>) | null, fail?: ((e: unknown) => B | PromiseLike<B>) | null): PromiseLike<A | B> {
    this.runs++
    return Promise.resolve().then(this.outcome).then(ok, fail)
  }
}

const SAMPLED = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'
const UNSAMPLED = '00-1af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00'

describe('tracing', () => {
  test('off unless an OTLP endpoint is set: no SDK, the no-op tracer, no headers on messages', () => {
    expect(startTracing(loadConfig({}), 'x')).toBeUndefined()
    const span = tracer.startSpan('nothing', {}, contextOfTraceparent('00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'))
    expect(span.isRecording()).toBe(false)
    expect(natsHeadersOf(span)).toBeUndefined()
    span.end()
  })

  test('the standard variables: endpoints, samplers', () => {
    expect(tracesUrlOf(loadConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318/' }))).toBe('http://c:4318/v1/traces')
    expect(tracesUrlOf(loadConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://t/x' }))).toBe('http://t/x')
    expect(samplerOf(loadConfig({})).toString()).toContain('ParentBased{root=AlwaysOnSampler')
    expect(samplerOf(loadConfig({ OTEL_TRACES_SAMPLER: 'parentbased_traceidratio', OTEL_TRACES_SAMPLER_ARG: '0.01' })).toString()).toContain('TraceIdRatioBased{0.01}')
    expect(samplerOf(loadConfig({ OTEL_TRACES_SAMPLER: 'always_off' })).toString()).toBe('AlwaysOffSampler')
    expect(() => loadConfig({ OTEL_TRACES_SAMPLER: 'sometimes' })).toThrow(/OTEL_TRACES_SAMPLER/)
    expect(() => loadConfig({ OTEL_TRACES_SAMPLER_ARG: '2' })).toThrow(/OTEL_TRACES_SAMPLER_ARG/)
    expect(() => loadConfig({ OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' })).toThrow(/OTEL_EXPORTER_OTLP_PROTOCOL/)
  })

  test('http/protobuf: spans reach the collector as protobuf, with the service name; a traceparent becomes the parent', async () => {
    const bodies: { type: string | null; path: string; bytes: Uint8Array }[] = []
    const collector = Bun.serve({
      port: 0,
      hostname: '127.0.0.1',
      fetch: async (req) => {
        bodies.push({ type: req.headers.get('content-type'), path: new URL(req.url).pathname, bytes: new Uint8Array(await req.arrayBuffer()) })
        return new Response(new Uint8Array(), { headers: { 'content-type': 'application/x-protobuf' } })
      },
    })
    try {
      const tracing = startTracing(loadConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${collector.port}`, OTEL_SERVICE_NAME: 'proto-test' }), 'unused')!
      const parent = contextOfTraceparent('00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01')
      const span = tracer.startSpan('a-span', {}, parent)
      expect(span.spanContext().traceId).toBe('0af7651916cd43dd8448eb211c80319c')
      const headers = natsHeadersOf(span)!
      expect(headers.get('traceparent')).toStartWith('00-0af7651916cd43dd8448eb211c80319c-')
      span.end()
      await tracing.stop()
      expect(bodies.length).toBeGreaterThan(0)
      expect(bodies[0].path).toBe('/v1/traces')
      expect(bodies[0].type).toBe('application/x-protobuf')
      const text = new TextDecoder().decode(bodies[0].bytes)
      expect(text).toContain('proto-test')
      expect(text).toContain('a-span')
      // Stopped: back to the no-op.
      expect(trace.getSpan(ROOT_CONTEXT)).toBeUndefined()
      expect(tracer.startSpan('after').isRecording()).toBe(false)
    } finally {
      collector.stop(true)
    }
  })

  test('requests and statements: a SERVER span per request named by its route, a CLIENT span per statement run inside a sampled one', async () => {
    const { spans, exporter } = memoryExporter()
    // With tracing off nothing is wrapped: the statement comes back as it is.
    const untouched = new Pending(() => 'rows')
    expect(statementSpan(untouched, 'select 1')).toBe(untouched)
    expect(Object.hasOwn(untouched, 'then')).toBe(false)

    const tracing = startTracing(loadConfig({ OTEL_TRACES_SAMPLER: 'parentbased_always_off' }), 'requests', exporter)!
    try {
      // Outside any span (a background poll): no span, nothing wrapped.
      const alone = new Pending(() => 'rows')
      expect(statementSpan(alone, 'select 1')).toBe(alone)
      expect(Object.hasOwn(alone, 'then')).toBe(false)

      const request = (traceparent: string) => new Request('http://h/v1/leaderboards/arena?limit=5', { headers: { traceparent } })
      // A sampled request: its span is active in the handler, its statements are its children.
      const sampled = request(SAMPLED)
      const failing = new Pending(() => {
        throw new Error('canceled')
      })
      const answer = await serveTraced(sampled, async (r) => {
        nameRequestSpan(r, '/v1/leaderboards/:board')
        expect(trace.getSpan(context.active())).toBe(trace.getSpan(contextOfRequest(r)))
        expect(await statementSpan(new Pending(() => 'rows'), 'select "player" from "leaderboard_entries" where "board" = $1').values()).toBe('rows')
        expect(await statementSpan(failing, 'update "leaderboards" set "x" = $1').then(() => 'answered', (e) => (e as Error).message)).toBe('canceled')
        return new Response('x', { status: 503 })
      })
      expect(answer.status).toBe(503)
      expect(failing.runs).toBe(1)

      // An unsampled one: not active (no context manager cost), but the parent of what the handler starts.
      const unsampled = request(UNSAMPLED)
      await serveTraced(unsampled, async (r) => {
        expect(trace.getSpan(context.active())).toBeUndefined()
        expect(trace.getSpan(contextOfRequest(r))?.isRecording()).toBe(false)
        const s = new Pending(() => 'rows')
        expect(statementSpan(s, 'select 1')).toBe(s)
        return new Response('ok')
      })
      // A handler that throws: the span ends in error, the error goes on.
      await expect(serveTraced(request(SAMPLED), () => Promise.reject(new Error('boom')))).rejects.toThrow('boom')
    } finally {
      await tracing.stop()
    }
    const server = spans.filter((s) => s.kind === SpanKind.SERVER)
    expect(server.map((s) => s.name)).toEqual(['GET /v1/leaderboards/:board', 'GET'])
    expect(server[0].attributes).toMatchObject({ 'http.request.method': 'GET', 'http.route': '/v1/leaderboards/:board', 'http.response.status_code': 503, 'url.path': '/v1/leaderboards/arena' })
    expect(server[0].status.code).toBe(SpanStatusCode.ERROR)
    expect(server[0].parentSpanContext?.spanId).toBe('b7ad6b7169203331')
    expect(server[1].status).toMatchObject({ code: SpanStatusCode.ERROR, message: 'boom' })
    const client = spans.filter((s) => s.kind === SpanKind.CLIENT)
    expect(client.map((s) => s.name)).toEqual(['SELECT leaderboard_entries', 'UPDATE leaderboards'])
    for (const c of client) expect(c.parentSpanContext?.spanId).toBe(server[0].spanContext().spanId)
    expect(client[0].attributes).toMatchObject({ 'db.system.name': 'postgresql', 'db.operation.name': 'SELECT', 'db.collection.name': 'leaderboard_entries' })
    expect(client[0].status.code).toBe(SpanStatusCode.UNSET)
    expect(client[1].status).toMatchObject({ code: SpanStatusCode.ERROR, message: 'canceled' })
  })
})
