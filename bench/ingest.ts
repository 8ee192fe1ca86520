/**
 * (5) Ingest: events/s acknowledged by POST /v1/events (batches of 100, several requests in
 * flight; 202 only after JetStream stored every event) against raw JetStream publish of the same
 * events from the same runtime (Bun, one connection, 1000 acks outstanding).
 */
import { pick, type BenchContext } from './lib/context'
import { scoreEvent, storedScore } from './lib/events'
import { deploy, publishAll } from './lib/fanfare'
import type { Figure } from './lib/report'

export async function ingest(ctx: BenchContext): Promise<Figure[]> {
  const total = pick(ctx, 500, 50_000)
  const batch = 100
  const concurrency = 8
  ctx.log(`ingest: ${total} events`)
  const d = await deploy()
  try {
    const api = await d.startApi()
    const token = d.env.vars.FANFARE_INGEST_TOKEN
    let sent = 0
    let accepted = 0
    const start = performance.now()
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (sent < total) {
          const from = sent
          sent += batch
          const events = Array.from({ length: batch }, (_, i) => scoreEvent('ing', from + i))
          const res = await fetch(`${api.url}/v1/events`, {
            method: 'POST',
            headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
            body: JSON.stringify({ events }),
          })
          await res.arrayBuffer()
          if (res.status === 202) accepted += batch
        }
      }),
    )
    const rest = accepted / ((performance.now() - start) / 1000)
    if (accepted < total) ctx.notes.push(`ingest: ${total - accepted} of ${total} events not accepted`)
    const { FANFARE_SUBJECT_PREFIX: prefix, FANFARE_PARTITIONS: partitions } = d.env.config
    const rawStart = performance.now()
    await publishAll(d.js, (function* () {
      for (let i = 0; i < total; i++) yield storedScore(prefix, partitions, 'raw', i)
    })())
    const raw = total / ((performance.now() - rawStart) / 1000)
    ctx.log(`  POST /v1/events: ${Math.round(rest)} events/s; raw JetStream publish: ${Math.round(raw)} events/s`)
    return [
      {
        group: 'ingest',
        name: `events/s acknowledged by POST /v1/events (batches of ${batch}, ${concurrency} in flight)`,
        unit: '/s',
        value: rest,
        baselineName: 'raw JetStream publish (Bun)',
        baseline: raw,
        target: { op: '>=', ratio: 0.5 },
      },
    ]
  } finally {
    await d.close()
  }
}
