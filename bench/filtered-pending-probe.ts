/**
 * Probe: how fast a filtered pull consumer reads a backlog that nats-server counted while the
 * consumer stood in the first half of what its subject has left in the stream's last block
 * (bench/findings.md, 2026-11-30, the filtered-pending count; core/nats-server-version.ts).
 *
 * A private nats-server (the installed binary, PROBE_NATS_PORT, default 4260) with a fresh store:
 * a stream of 4 subjects (one per partition, as the event stream's), BEFORE events stored, 4
 * consumers (one per subject, AckAll, as the runners') that read them and ack, then AFTER events
 * stored with nobody reading (a backlog), then the consumers read them in batches of 500 (a pull of
 * 1, then a no_wait pull of 499; no consumer info on the way: nats.js' consumers.get would ask for
 * one). Printed: each batch of the consumer of partition 1, with the stream sequences it covers.
 * What makes the server count the backlog before the first delivery:
 *   --info     a consumer info of each consumer (what GET /admin/projections and a runner's lag ask)
 *   --restart  a restart of nats-server before the AFTER events (it counts every consumer as it loads)
 * With neither it counted only when the consumers were created, before anything was stored.
 *   --poll MS  while the backlog is read, a listing of the consumers' infos every MS ms (what
 *              GET /admin/projections asked, and the console polls every 2 s, before it took the
 *              lag from the workers: core/projection-lag.ts)
 *
 *   flock /tmp/bench.lock bun bench/filtered-pending-probe.ts [--restart] [--info] [--poll 2000] [--before 2000] [--after 12000]
 *
 * nats-server 2.9.10, 2,000 + 12,000 events of ~560 B (one 8 MB block): neither 16-81 ms per batch;
 * --info or --restart 1.0-1.7 s per batch until the consumers pass the middle of the block's rest
 * (sequence ~8,000), then 12-210 ms again.
 */
import { spawn, type Subprocess } from 'bun'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { connect, type NatsConnection } from '@nats-io/transport-node'
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager } from '@nats-io/jetstream'
import { pullNow } from '../stream-workers/src/runtime/pull-now'

const arg = (name: string, def: number) => {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 ? Number(process.argv[i + 1]) : def
}
const restart = process.argv.includes('--restart')
const info = process.argv.includes('--info')
const pollMs = arg('poll', 0)
const BEFORE = arg('before', 2000)
const AFTER = arg('after', 12000)
const port = Number(process.env.PROBE_NATS_PORT ?? 4260)
const store = mkdtempSync(join(tmpdir(), 'filtered-pending-probe-'))
const body = JSON.stringify({ id: 'x'.repeat(36), type: 'score.submitted', data: { board: 'sum_abcdef', player: 'p12', score: 3 }, by: 'k'.repeat(40), at: new Date().toISOString(), pad: 'y'.repeat(250) })

let server: Subprocess | undefined
const startServer = async () => {
  // Another server on the port would answer in its place (and keep its own store).
  if (await Bun.connect({ hostname: '127.0.0.1', port, socket: { data() {} } }).then((s) => (s.end(), true), () => false)) throw new Error(`port ${port} is taken (PROBE_NATS_PORT)`)
  server = spawn(['nats-server', '-a', '127.0.0.1', '-p', String(port), '-js', '-sd', store], { stdout: 'ignore', stderr: 'ignore' })
  for (let i = 0; i < 100; i++) {
    try {
      const nc = await connect({ servers: `127.0.0.1:${port}`, maxReconnectAttempts: -1, reconnectTimeWait: 100 })
      await nc.close()
      return
    } catch {
      await Bun.sleep(50)
    }
  }
  throw new Error('nats-server did not start')
}
const stopServer = async () => {
  server?.kill('SIGTERM')
  await server?.exited
}

const publish = async (nc: NatsConnection, from: number, n: number) => {
  const js = jetstream(nc)
  const inFlight: Promise<unknown>[] = []
  for (let i = from; i < from + n; i++) {
    inFlight.push(js.publish(`p.ev.${i % 4}.score.submitted`, body, { msgID: `m${i}` }))
    if (inFlight.length >= 500) await Promise.all(inFlight.splice(0))
  }
  await Promise.all(inFlight)
}

/** Reads what consumer `c` holds in batches of 500 until it has `total`; logs each batch. */
const drain = async (nc: NatsConnection, c: string, total: number, log: boolean) => {
  // pullNow only: no consumer info (nats.js' consumers.get asks for one), see the header.
  let got = 0
  while (got < total) {
    const t0 = performance.now()
    const first = await pullNow(nc, { apiPrefix: '$JS.API', stream: 'S', consumer: c, max: 1, timeoutMs: 5_000 })
    if (first.msgs.length === 0) continue
    const rest = await pullNow(nc, { apiPrefix: '$JS.API', stream: 'S', consumer: c, max: 499, timeoutMs: 30_000 })
    const all = [first.msgs[0], ...rest.msgs]
    all[all.length - 1].ack()
    got += all.length
    if (log) console.log(`${c} batch ${all.length} seq ${all[0].seq}..${all[all.length - 1].seq} ${Math.round(performance.now() - t0)} ms${rest.err ? ` (${rest.err.message})` : ''}`)
  }
}

process.on('exit', () => server?.kill('SIGKILL'))
await startServer()
let nc = await connect({ servers: `127.0.0.1:${port}`, maxReconnectAttempts: -1, reconnectTimeWait: 100 })
let jsm = await jetstreamManager(nc)
await jsm.streams.add({ name: 'S', subjects: ['p.ev.>'], storage: 'file' as never, max_age: 3600 * 1e9, duplicate_window: 120 * 1e9 })
for (let p = 0; p < 4; p++) {
  await jsm.consumers.add('S', { durable_name: `c${p}`, filter_subject: `p.ev.${p}.score.>`, deliver_policy: DeliverPolicy.All, ack_policy: AckPolicy.All, max_ack_pending: 1000 })
}
await publish(nc, 0, BEFORE)
await Promise.all([0, 1, 2, 3].map((p) => drain(nc, `c${p}`, BEFORE / 4, false)))
if (restart) {
  await nc.close()
  await stopServer()
  await startServer()
  nc = await connect({ servers: `127.0.0.1:${port}`, maxReconnectAttempts: -1, reconnectTimeWait: 100 })
  jsm = await jetstreamManager(nc)
}
const t0 = performance.now()
await publish(nc, BEFORE, AFTER)
console.log(`stored ${AFTER} in ${Math.round(performance.now() - t0)} ms`)
if (info) for (let p = 0; p < 4; p++) await jsm.consumers.info('S', `c${p}`)
const t1 = performance.now()
let listings = 0
let draining = true
const polling = (async () => {
  while (pollMs > 0 && draining) {
    for await (const _ of jsm.consumers.list('S')) void _
    listings++
    await Bun.sleep(pollMs)
  }
})()
await Promise.all([0, 1, 2, 3].map((p) => drain(nc, `c${p}`, AFTER / 4, p === 1)))
draining = false
await polling
const polled = pollMs > 0 ? `, ${listings} consumer listings (every ${pollMs} ms)` : ''
console.log(`${restart ? 'restart' : 'no restart'}, ${info ? 'info' : 'no info'}${polled}: the backlog read in ${Math.round(performance.now() - t1)} ms`)
await nc.close()
await stopServer()
rmSync(store, { recursive: true, force: true })
