/**
 * Does a pull outlive its bound when a NATS node dies? A 3-node cluster (R3 stream and consumers),
 * one connection as a worker's (core/nats.ts connectNats), and `CONSUMERS` loops that pull as a
 * runner's first pull does (nats.js `consumer.fetch`, 1 message, IDLE_PULL_MS expiry) and ack what
 * they get, while a publisher stores events; every `--every` seconds the node the connection is on
 * is SIGKILLed and started again 10 s later. A fetch should end within its expiry plus nats.js'
 * missed-heartbeat bound (2 x expiry / 2, checked every expiry / 2): 5 + ~7.5 s. Any fetch still open
 * past `--hang` seconds is reported with what the connection went through meanwhile.
 *
 *   bun bench/fetch-kill-probe.ts [--seconds=120] [--every=15] [--hang=20] [--consumers=8]
 *
 * Exits 1 if a fetch hung. 2026-12-01: 8 kills, 44,754 fetches, none open past 11.5 s.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { AckPolicy, jetstream, jetstreamManager, type Consumer } from '@nats-io/jetstream'
import { nanos } from '@nats-io/transport-node'
import { connectNats } from '../core/nats'
import { privateNatsCluster } from '../test/cluster/private-nats'

const arg = (name: string, fallback: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? fallback
const SECONDS = Number(arg('seconds', '120'))
const EVERY_S = Number(arg('every', '15'))
const HANG_S = Number(arg('hang', '20'))
const CONSUMERS = Number(arg('consumers', '8'))
const EXPIRES_MS = 5_000

const dir = mkdtempSync(join(tmpdir(), 'fanfare-fetch-kill-'))
const cluster = privateNatsCluster({ size: 3, storeDir: dir, name: 'probe' })
await cluster.start()
const nc = await connectNats(cluster.url, 'fetch-kill-probe')
const pub = await connectNats(cluster.url, 'fetch-kill-probe-publisher')
const jsm = await jetstreamManager(nc)
const js = jetstream(nc)
const t0 = Date.now()
const at = () => `${((Date.now() - t0) / 1000).toFixed(1)}s`
const events: string[] = []
void (async () => {
  for await (const s of nc.status()) events.push(`${at()} ${s.type}${'server' in s ? ` ${String(s.server)}` : ''}`)
})()

await jsm.streams.add({ name: 'PROBE', subjects: ['probe.>'], num_replicas: 3 })
for (let i = 0; i < CONSUMERS; i++) {
  await jsm.consumers.add('PROBE', { durable_name: `c${i}`, filter_subject: `probe.${i}`, ack_policy: AckPolicy.All, ack_wait: nanos(30_000), num_replicas: 3 })
}

let stopping = false
const publisher = (async () => {
  const pjs = jetstream(pub)
  for (let n = 0; !stopping; n++) {
    await Promise.allSettled(Array.from({ length: CONSUMERS }, (_, i) => pjs.publish(`probe.${i}`, String(n), { timeout: 2000 })))
    await Bun.sleep(20)
  }
})()

type Open = { consumer: number; since: number; events: number }
const open = new Map<number, Open>()
let longest = 0
const hangs: string[] = []
let pulls = 0
let errors = 0

const loop = async (i: number) => {
  let consumer: Consumer | undefined
  while (!stopping) {
    try {
      consumer ??= await js.consumers.get('PROBE', `c${i}`)
      open.set(i, { consumer: i, since: Date.now(), events: events.length })
      const iter = await consumer.fetch({ max_messages: 1, expires: EXPIRES_MS })
      let last
      for await (const m of iter) last = m
      last?.ack()
      pulls++
    } catch {
      errors++
      await Bun.sleep(250)
    } finally {
      const o = open.get(i)
      if (o) longest = Math.max(longest, Date.now() - o.since)
      open.delete(i)
    }
  }
}
const loops = Array.from({ length: CONSUMERS }, (_, i) => loop(i))

const watch = setInterval(() => {
  for (const o of open.values()) {
    if (Date.now() - o.since > HANG_S * 1000 && !hangs.some((h) => h.startsWith(`c${o.consumer} since ${o.since}`))) {
      hangs.push(`c${o.consumer} since ${o.since}: open ${((Date.now() - o.since) / 1000).toFixed(1)} s; connection meanwhile: ${events.slice(o.events).join(', ') || 'nothing'}`)
      console.log(`${at()} HANG ${hangs.at(-1)}`)
    }
  }
}, 1000)

let kills = 0
while (Date.now() - t0 < SECONDS * 1000) {
  await Bun.sleep(EVERY_S * 1000)
  const port = Number(new URL(`nats://${nc.getServer()}`).port)
  const node = cluster.nodes.find((n) => n.url.endsWith(`:${port}`))
  if (!node) continue
  console.log(`${at()} SIGKILL ${node.url} (pulls so far ${pulls}, errors ${errors}, longest ${longest} ms)`)
  await node.kill()
  kills++
  await Bun.sleep(10_000)
  await node.start()
}
stopping = true
await Bun.sleep((HANG_S + 2) * 1000)
clearInterval(watch)
console.log(`${kills} kills, ${pulls} pulls, ${errors} errors, longest pull ${longest} ms, still open ${open.size}, hangs ${hangs.length}`)
for (const h of hangs) console.log(`  HANG ${h}`)
await Promise.race([Promise.all([publisher, ...loops]), Bun.sleep(1000)])
await nc.close().catch(() => {})
await pub.close().catch(() => {})
await cluster.stop()
rmSync(dir, { recursive: true, force: true })
process.exit(hangs.length > 0 ? 1 : 0)
