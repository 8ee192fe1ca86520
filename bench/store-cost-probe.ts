/**
 * Probe (not part of `bench/run.ts`): what nats-server spends storing change runs, by stream
 * configuration and publish method. A private nats-server (its CPU from /proc is then only this
 * probe's), one stream per variant on `<variant>.changes.leaderboard.*`, 30,000 runs (the fan-out
 * bench's burst over 100 channels) of `changes` changes each over 100 subjects. Variants take turns
 * (A B C ... A B C ...), each on a fresh stream; no subscriber.
 *
 *   flock /tmp/bench.lock node_modules/.bin/bun bench/store-cost-probe.ts [--runs=30000] [--rounds=3] [--only=a,b]
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { jetstream, jetstreamManager, type JetStreamClient, type StreamConfig } from '@nats-io/jetstream'
import { connect, nanos } from '@nats-io/transport-node'
import { freePort } from '../core/process'
import { cpuOf } from './lib/child'
import { createAckedPublisher } from '../core/acked-publish'

const arg = (name: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1]
const RUNS = Number(arg('runs') ?? 30_000)
const ROUNDS = Number(arg('rounds') ?? 3)
const ONLY = arg('only')?.split(',')
const CHANNELS = 100

type Publish = 'pipelined' | 'awaited' | 'msgid' | 'noack' | 'request' | 'inbox'
type Variant = { name: string; cfg: Partial<StreamConfig>; publish: Publish; changes?: number }

// What ensureStreams makes for a leaderboard change stream (file storage, 1,000 per subject, 24 h,
// a 2-minute duplicate window), then one thing changed at a time.
const current: Partial<StreamConfig> = { storage: 'file' as StreamConfig['storage'], max_msgs_per_subject: 1000, max_age: nanos(24 * 3600_000), duplicate_window: nanos(120_000) }
const variants = ([
  { name: 'current', cfg: current, publish: 'pipelined' },
  { name: 'memory', cfg: { ...current, storage: 'memory' as StreamConfig['storage'] }, publish: 'pipelined' },
  { name: 'no-per-subject-limit', cfg: { ...current, max_msgs_per_subject: -1 }, publish: 'pipelined' },
  { name: 'no-max-age', cfg: { ...current, max_age: 0 }, publish: 'pipelined' },
  { name: 'dup-window-1s', cfg: { ...current, duplicate_window: nanos(1000) }, publish: 'pipelined' },
  { name: 'msgid', cfg: current, publish: 'msgid' },
  { name: 'no-ack', cfg: { ...current, no_ack: true }, publish: 'noack' },
  { name: 'awaited', cfg: current, publish: 'awaited' },
  { name: 'request-no-headers', cfg: current, publish: 'request' },
  { name: 'acked-publisher', cfg: current, publish: 'inbox' },
  { name: 'acked-publisher-memory', cfg: { ...current, storage: 'memory' as StreamConfig['storage'] }, publish: 'inbox' },,
  { name: '10-changes-per-run', cfg: current, publish: 'pipelined', changes: 10 },
  { name: '3-changes-per-run', cfg: current, publish: 'pipelined', changes: 3 },
] as Variant[]).filter((v) => !ONLY || ONLY.includes(v.name))

const change = () => ({ player: 'player-0123', score: Math.round(Math.random() * 1e6), previous: 1234 })
const runBody = (channel: string, version: number, changes: number) =>
  JSON.stringify({ channel, version, epoch: 'e-0123456789', at: new Date().toISOString(), changes: Array.from({ length: changes }, change) })

const dir = mkdtempSync(join(tmpdir(), 'store-cost-'))
const port = freePort()
const server = Bun.spawn(['nats-server', '-a', '127.0.0.1', '-p', String(port), '-js', '-sd', dir], { stdout: 'ignore', stderr: 'ignore' })
for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => (server.kill(), rmSync(dir, { recursive: true, force: true }), process.exit(1)))
try {
  await Bun.sleep(500)
  const nc = await connect({ servers: `127.0.0.1:${port}` })
  const jsm = await jetstreamManager(nc)
  const js: JetStreamClient = jetstream(nc)
  const acked = createAckedPublisher(nc)
  const results = new Map<string, { server: number; client: number; ms: number }[]>(variants.map((v) => [v.name, []]))
  let n = 0
  for (let round = -1; round < ROUNDS; round++) {
    for (const v of round % 2 ? [...variants].reverse() : variants) {
      const name = `S${n++}`
      await jsm.streams.add({ name, subjects: [`${name}.changes.leaderboard.*`], ...v.cfg })
      const changes = v.changes ?? 1
      const runs = Math.round(RUNS / changes)
      const bodies = Array.from({ length: runs }, (_, i) => runBody(`leaderboard:c${i % CHANNELS}`, Math.floor(i / CHANNELS) + 1, changes))
      const subject = (i: number) => `${name}.changes.leaderboard.c${i % CHANNELS}`
      await Bun.sleep(200)
      const s0 = cpuOf(server.pid)
      const c0 = process.cpuUsage()
      const t0 = performance.now()
      if (v.publish === 'awaited') {
        for (let i = 0; i < runs; i++) await js.publish(subject(i), bodies[i])
      } else if (v.publish === 'noack') {
        for (let i = 0; i < runs; i++) nc.publish(subject(i), bodies[i])
        await nc.flush()
      } else if (v.publish === 'inbox') {
        // What the workers use (core/acked-publish.ts), 2,000 in flight.
        for (let i = 0; i < runs; i += 2000) {
          const batch = Array.from({ length: Math.min(2000, runs - i) }, (_, k) => ({ subject: subject(i + k), body: bodies[i + k] }))
          const { error } = await acked.publish(batch)
          if (error) throw error
        }
      } else if (v.publish === 'request') {
        let pending: Promise<unknown>[] = []
        for (let i = 0; i < runs; i++) {
          pending.push(nc.request(subject(i), bodies[i], { timeout: 5000 }).then((m) => m.json()))
          if (pending.length === 2000) await Promise.all(pending.splice(0))
        }
        await Promise.all(pending)
      } else {
        // 2,000 in flight, as the bench's stand-in (it waits every 20 rounds of 100).
        let pending: Promise<unknown>[] = []
        for (let i = 0; i < runs; i++) {
          if (v.publish === 'msgid') {
            pending.push(js.publish(subject(i), bodies[i], { msgID: `${name}-${i}` }))
          } else pending.push(js.publish(subject(i), bodies[i]))
          if (pending.length === 2000) await Promise.all(pending.splice(0))
        }
        await Promise.all(pending)
      }
      // Wait until every run is stored (no_ack gives no other sign), then let the server settle.
      for (;;) {
        const info = await jsm.streams.info(name)
        if (info.state.messages >= Math.min(runs, CHANNELS * (v.cfg.max_msgs_per_subject && v.cfg.max_msgs_per_subject > 0 ? v.cfg.max_msgs_per_subject : runs))) break
        await Bun.sleep(5)
      }
      const ms = performance.now() - t0
      await Bun.sleep(300)
      const srv = (cpuOf(server.pid) - s0) * 1000
      const c = process.cpuUsage(c0)
      const cli = (c.user + c.system) / 1000
      if (round >= 0) results.get(v.name)!.push({ server: srv, client: cli, ms })
      console.error(`${round < 0 ? 'warm-up' : `round ${round + 1}`} ${v.name}: server ${srv.toFixed(0)} ms, publisher ${cli.toFixed(0)} ms, wall ${ms.toFixed(0)} ms (${runs} runs)`)
      await jsm.streams.delete(name)
    }
  }
  console.log(`${RUNS} changes over ${CHANNELS} subjects, ${ROUNDS} rounds; load ${readFileSync('/proc/loadavg', 'utf8').trim()}`)
  console.log('| variant | runs | nats-server CPU ms | per run us | publisher CPU ms | wall ms |')
  console.log('| --- | --- | --- | --- | --- | --- |')
  for (const v of variants) {
    const rs = results.get(v.name)!
    const runs = Math.round(RUNS / (v.changes ?? 1))
    const range = (xs: number[]) => `${Math.min(...xs).toFixed(0)}-${Math.max(...xs).toFixed(0)}`
    const perRun = rs.map((r) => (r.server * 1000) / runs)
    console.log(`| ${v.name} | ${runs} | ${range(rs.map((r) => r.server))} | ${range(perRun)} | ${range(rs.map((r) => r.client))} | ${range(rs.map((r) => r.ms))} |`)
  }
  await nc.close()
} finally {
  server.kill()
  await server.exited
  rmSync(dir, { recursive: true, force: true })
}
