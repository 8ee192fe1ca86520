import { describe, expect, test } from 'bun:test'
import { ROOT_CONTEXT, trace } from '@opentelemetry/api'
import { loadConfig } from './config'
import { contextOfTraceparent, natsHeadersOf, samplerOf, startTracing, tracer, tracesUrlOf } from './tracing'

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
})
