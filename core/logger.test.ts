import { afterAll, describe, expect, test } from 'bun:test'
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace'
import { loadConfig } from './config'
import { createLogger } from './logger'
import { startTracing, tracer } from './tracing'

const capture = (isTTY?: boolean) => {
  const lines: string[] = []
  return { lines, output: { write: (l: string) => lines.push(l), isTTY } }
}

describe('logger', () => {
  const exporter = new InMemorySpanExporter()
  const tracing = startTracing(loadConfig({}), 'logger-test', exporter)!
  afterAll(() => tracing.stop())

  test('writes JSON lines, with the trace and span ids only inside an active span', () => {
    const { lines, output } = capture(false)
    const log = createLogger('info', { service: 't' }, { output })
    log.info('outside')
    let ids: { traceId: string; spanId: string } | undefined
    tracer.startActiveSpan('work', (span) => {
      ids = span.spanContext()
      log.child({ component: 'c' }).info({ n: 1 }, 'inside')
      span.end()
    })
    const [outside, inside] = lines.map((l) => JSON.parse(l))
    expect(outside.msg).toBe('outside')
    expect(outside.trace_id).toBeUndefined()
    expect(inside).toMatchObject({ msg: 'inside', n: 1, component: 'c', service: 't', trace_id: ids!.traceId, span_id: ids!.spanId })
    expect(ids!.traceId).toMatch(/^[0-9a-f]{32}$/)
  })

  test('the active span survives an await (the context manager follows promises)', async () => {
    const { lines, output } = capture(false)
    const log = createLogger('info', {}, { output })
    let traceId = ''
    await tracer.startActiveSpan('async', async (span) => {
      traceId = span.spanContext().traceId
      await new Promise((r) => setTimeout(r, 5))
      log.info('after await')
      span.end()
    })
    expect(JSON.parse(lines[0]).trace_id).toBe(traceId)
  })

  test('writes human-readable lines when the output is a terminal, JSON when told so', () => {
    const tty = capture(true)
    createLogger('info', { service: 't' }, { output: tty.output }).info({ partition: 3 }, 'hello there')
    expect(tty.lines).toHaveLength(1)
    expect(() => JSON.parse(tty.lines[0])).toThrow()
    expect(tty.lines[0]).toContain('hello there')
    expect(tty.lines[0]).toContain('INFO')
    expect(tty.lines[0]).toContain('partition')

    const forced = capture(true)
    createLogger('info', {}, { output: forced.output, format: 'json' }).info('plain')
    expect(JSON.parse(forced.lines[0]).msg).toBe('plain')

    const piped = capture(false)
    createLogger('info', {}, { output: piped.output, format: 'pretty' }).warn('for people')
    expect(piped.lines[0]).toContain('WARN')
    expect(piped.lines[0]).not.toContain('\u001b[') // no colours when not a terminal
  })
})
