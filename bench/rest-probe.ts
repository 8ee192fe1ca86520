/**
 * `bun bench/rest-probe.ts [requestsPerSecond] [eventsPerRequest] [rounds] [seconds] [--worker]`:
 * the REST ingest hop alone, Fanfare against what it is made of. Paced requests (as bench/e2e.ts at
 * 1,000 events/s: 50 a second of 20 events), each side taking turns, the time from send to answer:
 * - `fanfare`: POST /v1/events to a real API node (bootstrap ingest token, as the e2e bench);
 * - `bare`: the same events POSTed to bench/servers/bare-ingest.ts (Bun.serve, JSON, the same
 *   AckedPublisher, no auth/validation/limits/tracing): the floor of an HTTP ingest in Bun;
 * - `raw`: this process' own `js.publish` of each event (the bare pipeline's ingest in bench/e2e.ts);
 * - `healthz`: GET /healthz of the API node (Elysia and its global hooks, no body, no publish).
 * `--worker` starts a stream worker beside the API node, as in the e2e bench.
 */
import { freePort } from '../core/process'
import { startChild } from './lib/child'
import { BUN } from './lib/context'
import { scoreEvent, storedScore } from './lib/events'
import { deploy } from './lib/fanfare'
import { quantile } from './lib/stats'

const args = process.argv.slice(2).filter((a) => !a.startsWith('--'))
const [perSecond, perRequest, rounds, seconds] = [Number(args[0] ?? 50), Number(args[1] ?? 20), Number(args[2] ?? 3), Number(args[3] ?? 5)]
const withWorker = process.argv.includes('--worker')

const fan = await deploy()
const bareIngest = startChild([BUN, 'bench/servers/bare-ingest.ts'], { port: freePort(), natsUrl: fan.env.vars.NATS_URL })
try {
  const api = await fan.startApi()
  if (withWorker) fan.startWorker()
  const barePort = (await bareIngest.next<{ port: number }>(30_000)).port
  const { FANFARE_SUBJECT_PREFIX: prefix, FANFARE_PARTITIONS: partitions } = fan.env.config
  const token = fan.env.vars.FANFARE_INGEST_TOKEN
  let runId = 0
  const nextRun = () => `q${Date.now().toString(36)}${runId++}`
  type Side = 'fanfare' | 'bare' | 'raw' | 'healthz'
  const send: Record<Side, () => Promise<boolean>> = {
    fanfare: async () => {
      const run = nextRun()
      const events = Array.from({ length: perRequest }, (_, i) => scoreEvent(run, i))
      const res = await fetch(`${api.url}/v1/events`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` }, body: JSON.stringify({ events }) })
      await res.arrayBuffer()
      return res.status === 202
    },
    bare: async () => {
      const run = nextRun()
      const events = Array.from({ length: perRequest }, (_, i) => {
        const m = storedScore(prefix, partitions, run, i)
        return { id: `bare-${m.id}`, subject: m.subject, event: scoreEvent(run, i) }
      })
      const res = await fetch(`http://127.0.0.1:${barePort}/`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ events }) })
      await res.arrayBuffer()
      return res.status === 202
    },
    raw: async () => {
      const run = nextRun()
      const acks = await Promise.all(Array.from({ length: perRequest }, (_, i) => {
        const m = storedScore(prefix, partitions, run, i)
        return fan.js.publish(m.subject, m.body, { msgID: `raw-${m.id}`, timeout: 30_000 }).then(() => true, () => false)
      }))
      return acks.every(Boolean)
    },
    healthz: async () => {
      const res = await fetch(`${api.url}/healthz`)
      await res.arrayBuffer()
      return res.ok
    },
  }
  const phase = async (side: Side, secs: number) => {
    const times: number[] = []
    let failed = 0
    const pending: Promise<void>[] = []
    const gap = 1000 / perSecond
    const t0 = performance.now()
    for (let i = 0; i < Math.round(secs * perSecond); i++) {
      const d = t0 + i * gap - performance.now()
      if (d > 0) await Bun.sleep(d)
      const start = performance.now()
      pending.push(send[side]().then((ok) => void (ok ? times.push(performance.now() - start) : failed++), () => void failed++))
    }
    await Promise.all(pending)
    return { times, failed }
  }
  const sides: Side[] = ['fanfare', 'bare', 'raw', 'healthz']
  for (const s of sides) await phase(s, 1) // warm-up
  const fmt = (xs: number[]) => `${quantile(xs, 0.5).toFixed(2)} / ${quantile(xs, 0.9).toFixed(2)} / ${quantile(xs, 0.99).toFixed(2)} / ${Math.max(...xs).toFixed(1)}`
  console.log(`${perSecond} requests/s of ${perRequest} events, ${seconds} s phases${withWorker ? ', worker running' : ''}; send -> answer p50 / p90 / p99 / max ms`)
  for (let r = 0; r < rounds; r++) {
    const order = r % 2 ? [...sides].reverse() : sides
    for (const side of order) {
      const x = await phase(side, seconds)
      const load = (await Bun.file('/proc/loadavg').text()).split(' ').slice(0, 3).join(' ')
      console.log(`round ${r + 1} ${side.padEnd(8)} ${fmt(x.times)}${x.failed ? ` (${x.failed} failed)` : ''}; load ${load}`)
    }
  }
} finally {
  await bareIngest.stop()
  await fan.close()
}
