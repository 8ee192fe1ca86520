import { context, propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Attributes, type Context, type Link, type Span, type TextMapGetter, type Tracer } from '@opentelemetry/api'
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks'
import { W3CTraceContextPropagator } from '@opentelemetry/core'
import { OTLPTraceExporter as JsonExporter } from '@opentelemetry/exporter-trace-otlp-http'
import { OTLPTraceExporter as ProtobufExporter } from '@opentelemetry/exporter-trace-otlp-proto'
import { resourceFromAttributes } from '@opentelemetry/resources'
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  BatchSpanProcessor,
  ParentBasedSampler,
  TraceIdRatioBasedSampler,
  TracerProvider,
  type Sampler,
  type SpanExporter,
} from '@opentelemetry/sdk-trace'
import { headers as natsHeaders, type MsgHdrs } from '@nats-io/transport-node'
import type { Config } from './config'

/**
 * Tracing (OpenTelemetry). Spans are made by hand (no instrumentation sees Bun.serve, nats.js or
 * Postgres here) with the global API: without `startTracing` every call below is the API's no-op,
 * so a process with tracing off pays a function call per span and nothing else. The trace context
 * travels as W3C `traceparent` headers: HTTP request -> JetStream event message -> worker batch
 * (linked) -> change run message -> API node push.
 *
 * A live binding: startTracing sets the SDK's tracer, and its stop puts the no-op back (a proxy
 * tracer from the API would keep the stopped SDK's tracer for good).
 */
export let tracer: Tracer = trace.getTracer('fanfare')

let started = false

/** Whether the SDK is started in this process (spans may be sampled): callers skip work only a trace needs. */
export const isTracing = () => started

export type Tracing = {
  /** Exports what is still buffered, then stops. */
  stop: () => Promise<void>
}

/** The sampler the OTEL_TRACES_SAMPLER variables name (the spec's names and defaults). */
export function samplerOf(config: Pick<Config, 'OTEL_TRACES_SAMPLER' | 'OTEL_TRACES_SAMPLER_ARG'>): Sampler {
  const ratio = () => new TraceIdRatioBasedSampler(config.OTEL_TRACES_SAMPLER_ARG ?? 1)
  switch (config.OTEL_TRACES_SAMPLER) {
    case 'always_on':
      return new AlwaysOnSampler()
    case 'always_off':
      return new AlwaysOffSampler()
    case 'traceidratio':
      return ratio()
    case 'parentbased_always_off':
      return new ParentBasedSampler({ root: new AlwaysOffSampler() })
    case 'parentbased_traceidratio':
      return new ParentBasedSampler({ root: ratio() })
    default:
      return new ParentBasedSampler({ root: new AlwaysOnSampler() })
  }
}

/** Where traces go: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as is, or OTEL_EXPORTER_OTLP_ENDPOINT + `/v1/traces`. */
export function tracesUrlOf(config: Pick<Config, 'OTEL_EXPORTER_OTLP_ENDPOINT' | 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT'>): string | undefined {
  if (config.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) return config.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
  if (config.OTEL_EXPORTER_OTLP_ENDPOINT) return `${config.OTEL_EXPORTER_OTLP_ENDPOINT.replace(/\/+$/, '')}/v1/traces`
  return undefined
}

/**
 * Starts the SDK when an OTLP endpoint is configured: registers the global tracer provider (batched
 * OTLP/HTTP export, json or protobuf), the W3C propagator and an AsyncLocalStorage context manager
 * (so logs see the active span). Returns undefined, starting nothing, when no endpoint is set.
 * Headers, timeout and compression of the export come from the standard OTEL_EXPORTER_OTLP_*
 * variables, read by the exporter itself.
 */
export function startTracing(config: Config, defaultServiceName: string, exporter?: SpanExporter): Tracing | undefined {
  const url = tracesUrlOf(config)
  if (!url && !exporter) return undefined
  const spanExporter = exporter ?? (config.OTEL_EXPORTER_OTLP_PROTOCOL === 'http/json' ? new JsonExporter({ url }) : new ProtobufExporter({ url }))
  const provider = new TracerProvider({
    resource: resourceFromAttributes({ 'service.name': config.OTEL_SERVICE_NAME ?? defaultServiceName }),
    sampler: samplerOf(config),
    spanProcessors: [new BatchSpanProcessor({ exporter: spanExporter, scheduledDelayMillis: 1000 })],
  })
  const contextManager = new AsyncLocalStorageContextManager().enable()
  context.setGlobalContextManager(contextManager)
  propagation.setGlobalPropagator(new W3CTraceContextPropagator())
  trace.setGlobalTracerProvider(provider)
  tracer = provider.getTracer('fanfare')
  started = true
  return {
    stop: async () => {
      started = false
      await provider.shutdown().catch(() => {})
      trace.disable()
      propagation.disable()
      context.disable()
      tracer = trace.getTracer('fanfare')
    },
  }
}

const fetchHeadersGetter: TextMapGetter<Headers> = {
  keys: (h) => [...h.keys()],
  get: (h, key) => h.get(key) ?? undefined,
}

/** Each request's context under its SERVER span (see serveTraced), for work the handler starts. */
const requestContexts = new WeakMap<Request, Context>()

/**
 * The trace context work done for `request` belongs under: its SERVER span's (serveTraced), else
 * what the request carries (`traceparent`), else the root context.
 */
export const contextOfRequest = (request: Request): Context =>
  requestContexts.get(request) ?? propagation.extract(ROOT_CONTEXT, request.headers, fetchHeadersGetter)

/**
 * Handles `request` inside a SERVER span (HTTP semantic conventions; child of the request's
 * `traceparent`), named by its method until `nameRequestSpan` gives it the route. A sampled span
 * is made active, so the Postgres statements the handler runs become its children (see
 * statementSpan); an unsampled one is not (the context manager costs CPU per request), but is
 * still the parent of what the handler starts through contextOfRequest, so every span of a
 * request shares its sampling decision. With tracing off: `handle(request)`, nothing else.
 */
export function serveTraced<R extends Response | undefined>(request: Request, handle: (request: Request) => R | Promise<R>): R | Promise<R> {
  if (!started) return handle(request)
  const span = tracer.startSpan(request.method, { kind: SpanKind.SERVER, attributes: { 'http.request.method': request.method } }, propagation.extract(ROOT_CONTEXT, request.headers, fetchHeadersGetter))
  if (span.isRecording()) {
    const url = new URL(request.url)
    span.setAttributes({ 'url.path': url.pathname, 'url.scheme': url.protocol.slice(0, -1) })
  }
  const ctx = trace.setSpan(ROOT_CONTEXT, span)
  requestContexts.set(request, ctx)
  const done = (response: R) => {
    if (response) {
      span.setAttribute('http.response.status_code', response.status)
      if (response.status >= 500) span.setStatus({ code: SpanStatusCode.ERROR })
    }
    span.end()
    return response
  }
  const failed = (err: unknown) => {
    span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error)?.message })
    span.end()
    throw err
  }
  try {
    const out = span.isRecording() ? context.with(ctx, () => handle(request)) : handle(request)
    return out instanceof Promise ? out.then(done, failed) : done(out)
  } catch (err) {
    return failed(err)
  }
}

/**
 * Runs a WebSocket command (a subscribe) inside a SERVER span `name`: the child of the frame's
 * `traceparent` when it carries one (browsers cannot set headers on frames), else a root the
 * sampler decides on, as a REST request is. A sampled span is made active, so the Postgres
 * statements the command awaits (a snapshot read, a history read) become its children (see
 * statementSpan). A read that several subscribers share shows under the one that started it.
 * `work` may add attributes to the span it is given (undefined when not recorded). With tracing
 * off: `work()`, nothing else (`attributes` is not called: a subscribe builds none).
 */
export async function commandSpan<T>(name: string, traceparent: string | undefined, attributes: () => Attributes, work: (span: Span | undefined) => Promise<T>): Promise<T> {
  if (!started) return work(undefined)
  const parent = contextOfTraceparent(traceparent)
  const span = tracer.startSpan(name, { kind: SpanKind.SERVER, attributes: attributes() }, parent)
  if (!span.isRecording()) {
    span.end()
    return work(undefined)
  }
  try {
    return await context.with(trace.setSpan(parent, span), () => work(span))
  } catch (err) {
    span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error)?.message })
    throw err
  } finally {
    span.end()
  }
}

/** Names `request`'s SERVER span by its route template (`GET /v1/leaderboards/:board`), once routed. */
export function nameRequestSpan(request: Request, route: string): void {
  const ctx = requestContexts.get(request)
  const span = ctx && trace.getSpan(ctx)
  if (!span?.isRecording()) return
  span.updateName(`${request.method} ${route}`)
  span.setAttribute('http.route', route)
}

/**
 * Wraps a driver's pending statement (postgres.js and Bun SQL: a lazy thenable the caller awaits)
 * in a CLIENT span when a sampled span is active: a REST read shows its Postgres time under its
 * request (the observability notes: no instrumentation exists for these drivers; wrap
 * statements). `text` is the parameterized SQL (values are never recorded). Otherwise the
 * statement is returned as it is: with tracing off, or outside a sampled span, no cost but a check.
 */
export function statementSpan<Q extends PromiseLike<unknown>>(statement: Q, text: unknown): Q {
  if (!started || typeof text !== 'string') return statement
  const parent = context.active()
  if (!trace.getSpan(parent)?.isRecording()) return statement
  const operation = /^\s*(\w+)/.exec(text)?.[1]?.toUpperCase() ?? 'QUERY'
  const table = /\b(?:from|into|update|join)\s+"?(\w+)"?/i.exec(text)?.[1]
  const span = tracer.startSpan(
    table ? `${operation} ${table}` : operation,
    {
      kind: SpanKind.CLIENT,
      attributes: { 'db.system.name': 'postgresql', 'db.operation.name': operation, ...(table ? { 'db.collection.name': table } : {}), 'db.query.text': text.slice(0, 2048) },
    },
    parent,
  )
  let ended = false
  const end = (err?: unknown) => {
    if (ended) return
    ended = true
    if (err !== undefined) span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error)?.message })
    span.end()
  }
  // The statement runs when awaited: its `then` (the driver's, which starts it) is wrapped on this
  // one object, so modifiers the caller applies first (`.values()` returns the same object) hold.
  const then = statement.then
  ;(statement as { then: unknown }).then = function (this: Q, ok?: (v: unknown) => unknown, fail?: (e: unknown) => unknown) {
    return then.call(
      this,
      (v) => {
        end()
        return ok ? ok(v) : v
      },
      (e) => {
        end(e)
        if (fail) return fail(e)
        throw e
      },
    )
  }
  return statement
}

/** The trace context of a bare `traceparent` value (a WebSocket publish frame's), or the root context. */
export function contextOfTraceparent(traceparent: string | undefined): Context {
  if (!traceparent) return ROOT_CONTEXT
  return propagation.extract(ROOT_CONTEXT, { traceparent }, { keys: () => ['traceparent'], get: (c, k) => c[k as 'traceparent'] })
}

const natsGetter: TextMapGetter<MsgHdrs> = {
  keys: (h) => h.keys(),
  get: (h, key) => (h.has(key) ? h.get(key) : undefined),
}

/**
 * NATS headers carrying `span`'s context, or undefined when the span is not sampled (no header is
 * added to a message nobody will trace: headers cost bytes on every message).
 */
export function natsHeadersOf(span: Span): MsgHdrs | undefined {
  if (!span.isRecording()) return undefined
  const h = natsHeaders()
  propagation.inject(trace.setSpan(ROOT_CONTEXT, span), h, { set: (c, k, v) => c.set(k, v) })
  return h
}

/** The trace context a NATS message carries, or undefined when it carries none. */
export function contextOfNats(h: MsgHdrs | undefined): Context | undefined {
  if (!h || !h.has('traceparent')) return undefined
  return propagation.extract(ROOT_CONTEXT, h, natsGetter)
}

/** A link to the span a message's headers name, for a batch span that handles many messages. */
export function linkOfNats(h: MsgHdrs | undefined): Link | undefined {
  const ctx = contextOfNats(h)
  const sc = ctx && trace.getSpanContext(ctx)
  return sc ? { context: sc } : undefined
}

/** The active span's ids for a log line, when there is one (pino's mixin). */
export function traceFieldsOfActiveSpan(): { trace_id?: string; span_id?: string } {
  const span = trace.getSpan(context.active())
  if (!span) return {}
  const sc = span.spanContext()
  if (!trace.isSpanContextValid(sc)) return {}
  return { trace_id: sc.traceId, span_id: sc.spanId }
}
