import { afterAll, describe, expect, test } from 'bun:test'
import { SpanKind } from '@opentelemetry/api'
import type { ReadableSpan, SpanExporter } from '@opentelemetry/sdk-trace'
import { sql } from 'drizzle-orm'
import { loadConfig } from '../config'
import { createTestEnv, type TestEnv } from '../testing/env'
import { serveTraced, startTracing } from '../tracing'
import { connectBunSql, connectPostgres, rowsOf } from './client'

const SAMPLED = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'

/**
 * Statements run inside a sampled request get a CLIENT span each on both drivers: on the pool, in
 * a transaction, and in a savepoint within it (a nested transaction: the one-by-one fallback of a
 * batch, a rebuild's careful statements), each a child of the request's span.
 */
describe.each([
  ['postgres.js', connectPostgres],
  ["Bun's SQL", connectBunSql],
] as const)('statement spans (%s)', (_, connect) => {
  let env: TestEnv | undefined
  afterAll(async () => {
    await env?.cleanup()
  })

  test('on the pool, in a transaction and in a savepoint', async () => {
    env = await createTestEnv()
    const database = await connect(env.vars.DATABASE_URL, { max: 2 })
    const spans: ReadableSpan[] = []
    const exporter: SpanExporter = { export: (batch, done) => (spans.push(...batch), done({ code: 0 })), shutdown: async () => {} }
    const tracing = startTracing(loadConfig({ OTEL_TRACES_SAMPLER: 'parentbased_always_off' }), 'spans', exporter)!
    try {
      await serveTraced(new Request('http://h/x', { headers: { traceparent: SAMPLED } }), async () => {
        await rowsOf(database.db, sql`select 1 as pool from pg_class limit 1`)
        await database.db.transaction(async (tx) => {
          await rowsOf(tx, sql`select 2 as outer_tx from pg_namespace limit 1`)
          await tx.transaction(async (sp) => {
            await rowsOf(sp, sql`select 3 as in_savepoint from pg_type limit 1`)
          })
        })
        return new Response('ok')
      })
    } finally {
      await tracing.stop()
      await database.close()
    }
    const server = spans.find((s) => s.kind === SpanKind.SERVER)!
    const client = spans.filter((s) => s.kind === SpanKind.CLIENT)
    expect(client.map((s) => s.name)).toEqual(expect.arrayContaining(['SELECT pg_class', 'SELECT pg_namespace', 'SELECT pg_type']))
    for (const s of client) expect(s.parentSpanContext?.spanId).toBe(server.spanContext().spanId)
  })
})
