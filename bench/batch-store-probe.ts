/**
 * Probe (not part of `bench/run.ts`): what nats-server spends per live batch message (one worker
 * batch's change runs as one message, core/live-batches.ts), by stream configuration and by what
 * follows the stream. A private nats-server (its CPU from /proc is then only this probe's), one
 * stream per variant, `--msgs` messages of `--runs` runs each (100: ~18 KB, the fan-out bench's
 * 1,000 x 100 burst is 300 of them) published as the workers do (core/acked-publish.ts, 30 in
 * flight), and a push consumer like an API node's change feed (api/src/realtime/change-feed.ts:
 * AckAll, memory state, acked once per tick) that the probe waits on. Variants take turns.
 * `--prof=<port>` starts nats-server with its Go profiler on that port (then
 * `curl 127.0.0.1:<port>/debug/pprof/profile?seconds=N`; nats-server also turns on block
 * profiling, which costs a little).
 *
 *   flock /tmp/bench.lock node_modules/.bin/bun bench/batch-store-probe.ts [--msgs=3000] [--runs=100] [--rounds=3] [--only=current,memory]
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { AckPolicy, DeliverPolicy, jetstreamManager, type StreamConfig } from '@nats-io/jetstream'
import { connect, createInbox, nanos } from '@nats-io/transport-node'
import { freePort } from '../core/process'
import { cpuOf } from './lib/child'
import { createAckedPublisher } from '../core/acked-publish'

const arg = (name: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1]
const MSGS = Number(arg('msgs') ?? 3000)
const RUNS = Number(arg('runs') ?? 100)
const ROUNDS = Number(arg('rounds') ?? 3)
const ONLY = arg('only')?.split(',')
const PROF = arg('prof')

type Variant = { name: string; cfg: Partial<StreamConfig>; consumer: boolean; msgId?: boolean; ack?: 'none' | 'every-50' }
// What ensureStreams makes for a change stream (file storage, 1,000 per subject, 24 h, a 2-minute
// duplicate window), then one thing changed at a time.
const current: Partial<StreamConfig> = { storage: 'file' as StreamConfig['storage'], max_msgs_per_subject: 1000, max_age: nanos(24 * 3600_000), duplicate_window: nanos(120_000) }
const variants = (
  [
    { name: 'current', cfg: current, consumer: true },
    { name: 'no-consumer', cfg: current, consumer: false },
    { name: 'memory', cfg: { ...current, storage: 'memory' as StreamConfig['storage'] }, consumer: true },
    // nats-server sizes a stream's blocks from max_bytes (none: 8 MB for a limits stream).
    { name: 'max-bytes-8M', cfg: { ...current, max_bytes: 8 * 1024 * 1024 }, consumer: true },
    { name: 'max-bytes-1G', cfg: { ...current, max_bytes: 1024 * 1024 * 1024 }, consumer: true },
    { name: 'msg-id', cfg: current, consumer: true, msgId: true },
    { name: 'ack-none', cfg: current, consumer: true, ack: 'none' },
    { name: 'ack-every-50', cfg: current, consumer: true, ack: 'every-50' },
  ] satisfies Variant[]
).filter((v) => !ONLY || ONLY.includes(v.name)) as Variant[]

const runOf = (channel: number, version: number) =>
  JSON.stringify({ channel: `leaderboard:c${channel}`, version, epoch: 'bench', at: new Date().toISOString(), stored: new Date().toISOString(), changes: [{ player: 'p', score: Date.now() + Math.random(), previous: null }] })
// As liveBatchMessages writes it: the runs' JSON inside one object.
const bodies = Array.from({ length: MSGS }, (_, m) => `{"runs":[${Array.from({ length: RUNS }, (_, c) => runOf(c, m + 1)).join(',')}]}`)

const dir = mkdtempSync(join(tmpdir(), 'batch-store-'))
const port = freePort()
const server = Bun.spawn(['nats-server', '-a', '127.0.0.1', '-p', String(port), '-js', '-sd', dir, ...(PROF ? ['--profile', PROF] : [])], { stdout: 'ignore', stderr: 'ignore' })
for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => (server.kill(), rmSync(dir, { recursive: true, force: true }), process.exit(1)))
try {
  await Bun.sleep(500)
  const nc = await connect({ servers: `127.0.0.1:${port}` })
  const jsm = await jetstreamManager(nc)
  const publisher = createAckedPublisher(nc)
  const results = new Map<string, number[]>(variants.map((v) => [v.name, []]))
  console.error(`${MSGS} messages of ${RUNS} runs, ${bodies[0].length} B each`)
  let n = 0
  for (let round = -1; round < ROUNDS; round++) {
    for (const v of round % 2 ? [...variants].reverse() : variants) {
      const name = `S${n++}`
      await jsm.streams.add({ name, subjects: [`${name}.changes.leaderboard.>`], ...v.cfg })
      const all = Promise.withResolvers<void>()
      if (v.consumer) {
        const inbox = createInbox()
        let got = 0
        let last: string | undefined
        let acking = false
        nc.subscribe(inbox, {
          callback: (_, m) => {
            if (!m.reply) return // a heartbeat
            got++
            last = m.reply
            if (v.ack === 'every-50') {
              if (got % 50 === 0 || got === MSGS) nc.publish(m.reply, '+ACK')
            } else if (v.ack === undefined && !acking) {
              acking = true
              setImmediate(() => ((acking = false), last && nc.publish(last, '+ACK')))
            }
            if (got === MSGS) all.resolve()
          },
        })
        await jsm.consumers.add(name, {
          deliver_subject: inbox,
          ack_policy: v.ack === 'none' ? AckPolicy.None : AckPolicy.All,
          ...(v.ack === 'none' ? {} : { max_ack_pending: 1000 }),
          idle_heartbeat: nanos(5000),
          mem_storage: true,
          num_replicas: 1,
          deliver_policy: DeliverPolicy.New,
        })
      } else all.resolve()
      await Bun.sleep(200)
      const s0 = cpuOf(server.pid)
      const t0 = performance.now()
      for (let i = 0; i < MSGS; i += 30) {
        const batch = bodies.slice(i, i + 30).map((body, k) => ({ subject: `${name}.changes.leaderboard.p0.batch`, body, ...(v.msgId ? { msgId: `${name}-${i + k}` } : {}) }))
        const { error } = await publisher.publish(batch)
        if (error) throw error
      }
      await all.promise
      const ms = performance.now() - t0
      await Bun.sleep(300)
      const cpuMs = (cpuOf(server.pid) - s0) * 1000
      if (round >= 0) results.get(v.name)!.push(cpuMs)
      console.error(`${round < 0 ? 'warm-up' : `round ${round + 1}`} ${v.name}: nats-server ${cpuMs.toFixed(0)} ms (${((cpuMs * 1000) / MSGS).toFixed(0)} us a message), wall ${ms.toFixed(0)} ms`)
      await jsm.streams.delete(name)
    }
  }
  console.log(`${MSGS} messages of ${RUNS} runs (${bodies[0].length} B), ${ROUNDS} rounds; load ${readFileSync('/proc/loadavg', 'utf8').trim()}`)
  console.log('| variant | nats-server us a message, by round |')
  console.log('| --- | --- |')
  for (const v of variants) console.log(`| ${v.name} | ${results.get(v.name)!.map((ms) => ((ms * 1000) / MSGS).toFixed(0)).join(', ')} |`)
  await nc.close()
} finally {
  server.kill()
  await server.exited
  rmSync(dir, { recursive: true, force: true })
}
