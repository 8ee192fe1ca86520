/**
 * `bun bench/fanout-probe.ts [clients] [channels] [rounds] [--compare=<checkout>]`: only the burst
 * of bench/fanout.ts for one shape, Fanfare and bare Bun taking turns (A B A B ...), each round's
 * ratio printed with the server's CPU time for the burst (/proc), this process's (the
 * publisher's), the shared nats-server's and the client processes' (over the whole scenario).
 * With --compare, an API node running another checkout (say `git archive <commit>` unpacked,
 * node_modules linked) takes turns too, on a deployment of its own (a node follows every
 * change run of its streams, so two nodes on one deployment would load each other).
 * With --changes=N, the `fanfare` side's runs hold N changes each (the bench's hold one).
 * With --js-publish, a side `js.publish` takes turns too: this checkout on a deployment of its own,
 * its stand-in publishing each run with `js.publish` (as the workers did before
 * core/acked-publish.ts) instead of the workers' AckedPublisher.
 * The `fanfare` side is a deployment from before live batches (one message per change run).
 * With --batches, a side `batches` takes turns too: a deployment with live batches (a new one),
 * its stand-in publishing each flush's runs as one live batch message (core/live-batches.ts), or
 * one per partition with --batch-partitions=N (channels spread by hash, as N workers' batches).
 * With both --compare and --batches, the other checkout's deployment has the flag on too (and its
 * stand-in publishes live batches): `compare` / bun beside `batches` / bun is a before/after.
 */
import { readFileSync } from 'node:fs'
import { freePort } from '../core/process'
import { TEST_NATS_URL } from '../core/testing/env'
import { subjects } from '../core/events'
import type { ChangeRun } from '../core/channels'
import { nowMs } from './lib/stats'
import { spawnProc, waitReady } from '../test/e2e/harness'
import { cpuOf, natsServerPid, startChild } from './lib/child'
import { BUN, type BenchContext } from './lib/context'
import { deploy, type Deployment } from './lib/fanfare'
import { fanfarePublisher, scenario } from './fanout'

const args = process.argv.slice(2).filter((a) => !a.startsWith('--'))
const compare = process.argv.find((a) => a.startsWith('--compare='))?.slice(10)
const n = Number(args[0] ?? 1000)
const layout = Number(args[1] ?? 100)
const rounds = Number(args[2] ?? 3)
/** Changes per run of the `fanfare` side's stand-in (see fanfarePublisher); the bench's is 1. */
const changes = Number(process.argv.find((a) => a.startsWith('--changes='))?.slice(10) ?? 1)
/** With --batches: the partitions each flush's runs are spread over, one live batch each (see fanfarePublisher). */
const batchPartitions = Number(process.argv.find((a) => a.startsWith('--batch-partitions='))?.slice(19) ?? 1)
const batches = process.argv.includes('--batches')
const ctx: BenchContext = { mode: 'full', log: (m) => console.error(m), notes: [] }
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

type Side = { name: string; url: string; pid: number; publisher: Awaited<ReturnType<typeof fanfarePublisher>> | BunPub }
type BunPub = { round: (c: string[], v: number) => void; flush: () => Promise<void>; close: () => void }

/** The stand-in as it was: one `js.publish` (a request, a timer, an empty header) per run. */
function jsPublisher(d: Deployment): BunPub {
  const prefix = d.env.config.FANFARE_SUBJECT_PREFIX
  let pending: Promise<unknown>[] = []
  return {
    round: (channels, version) => {
      for (const channel of channels) {
        const run: ChangeRun = { channel, version, epoch: 'bench', changes: [{ player: 'p', score: nowMs(), previous: null }], at: new Date().toISOString() }
        pending.push(d.js.publish(subjects.change(prefix, channel), JSON.stringify(run)))
      }
    },
    flush: async () => {
      const p = pending
      pending = []
      await Promise.all(p)
    },
    close: () => {},
  }
}

/**
 * The pid of the nats-server the deployments use (FANFARE_TEST_NATS_URL's port; its CPU per burst is
 * printed too). The shared one's CPU includes other sessions' tests: a private server
 * (`nats-server -js -p <port>` and FANFARE_TEST_NATS_URL) shows this probe's alone.
 */
const nats = natsServerPid(TEST_NATS_URL)

/** CPU seconds of this process's reaped children (/proc/self/stat cutime + cstime): a scenario's client processes, once it stopped them. */
function reapedChildrenCpu(): number {
  const stat = readFileSync('/proc/self/stat', 'utf8')
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  // Fields 16 and 17 of stat (1-based), counted here from field 3.
  return (Number(f[13]) + Number(f[14])) / 100
}

const deployments: Deployment[] = []
const bun = startChild([BUN, 'bench/servers/bare-bun.ts'], { port: freePort() })
try {
  const sides: Side[] = []
  // The `fanfare` side: a deployment from before live batches (one message per change run).
  const d = await deploy({}, { changes: 'runs' })
  deployments.push(d)
  const api = await d.startApi()
  sides.push({ name: 'fanfare', url: `ws://127.0.0.1:${api.port}/v1/ws`, pid: api.proc.proc.pid, publisher: await fanfarePublisher(d, changes) })
  if (compare) {
    // With --batches too, the other checkout runs with live batches as well: it is compared with
    // the `batches` side (this checkout's live batches path), not with the old path.
    const d2 = batches ? await deploy() : await deploy({}, { changes: 'runs' })
    deployments.push(d2)
    const port = freePort()
    const proc = spawnProc('api-compare', `${compare}/api/src/main.ts`, { ...d2.env.vars, PORT: String(port), HOST: '127.0.0.1' })
    await waitReady(`http://127.0.0.1:${port}`, [proc])
    sides.push({ name: `compare`, url: `ws://127.0.0.1:${port}/v1/ws`, pid: proc.proc.pid, publisher: batches ? await fanfarePublisher(d2, changes, batchPartitions) : await fanfarePublisher(d2) })
    deployments.push({ close: () => proc.stop() } as unknown as Deployment)
  }
  if (batches) {
    // A deployment with live batches (a new one), its stand-in publishing each flush's runs as
    // one live batch message (as the workers then do).
    const d4 = await deploy()
    deployments.push(d4)
    const api4 = await d4.startApi()
    sides.push({ name: 'batches', url: `ws://127.0.0.1:${api4.port}/v1/ws`, pid: api4.proc.proc.pid, publisher: await fanfarePublisher(d4, changes, batchPartitions) })
  }
  if (process.argv.includes('--js-publish')) {
    const d3 = await deploy({}, { changes: 'runs' })
    deployments.push(d3)
    const api3 = await d3.startApi()
    sides.push({ name: 'js.publish', url: `ws://127.0.0.1:${api3.port}/v1/ws`, pid: api3.proc.proc.pid, publisher: jsPublisher(d3) })
  }
  const bunPort = (await bun.next(30_000)).port
  const ws = new WebSocket(`ws://127.0.0.1:${bunPort}/`)
  await new Promise<void>((ok) => (ws.onopen = () => ok()))
  const frameOf = (channel: string, version: number) =>
    JSON.stringify({ op: 'update', channel, version, epoch: 'bench', data: { player: 'p', score: performance.timeOrigin + performance.now(), previous: null } })
  const bunPub: BunPub = {
    round: (cs, v) => {
      for (const c of cs) ws.send(`${c}\n${frameOf(c, v)}`)
    },
    flush: async () => {
      while (ws.bufferedAmount > 0) await Bun.sleep(1)
    },
    close: () => ws.close(),
  }
  sides.push({ name: 'bun', url: `ws://127.0.0.1:${bunPort}/`, pid: bun.proc.pid, publisher: bunPub })
  // Which server process is which side's (a CPU profile's file name has its pid; see FANFARE_BENCH_PROFILE).
  console.log(`server pids: ${sides.map((s) => `${s.name} ${s.pid}`).join(', ')}`)
  const rates = new Map<string, number[]>(sides.map((s) => [s.name, []]))
  let s = 0
  // As bench/fanout.ts sizes them (full mode): a paced phase, then the burst.
  const pacedPerSec = Math.max(2, Math.round(20_000 / n))
  const sizes = { pacedPerSec, pacedRounds: Math.max(10, 2 * pacedPerSec), burstRounds: Math.max(10, Math.round(300_000 / n)) }
  for (let r = -1; r < rounds; r++) {
    for (const side of r % 2 ? [...sides].reverse() : sides) {
      const channels = Array.from({ length: layout }, (_, i) => `leaderboard:p${s}c${i}`)
      s++
      const me = process.cpuUsage()
      const clients0 = reapedChildrenCpu()
      const nats0 = nats === undefined ? Number.NaN : cpuOf(nats)
      const kind = side.name === 'bun' ? 'bun' : 'fanfare'
      const res = await scenario(ctx, kind, side.url, side.publisher, n, channels, sizes, {}, 1, side.pid)
      const pub = process.cpuUsage(me)
      const clientsMs = (reapedChildrenCpu() - clients0) * 1000
      const natsMs = ((nats === undefined ? Number.NaN : cpuOf(nats)) - nats0) * 1000
      const label = r < 0 ? 'warm-up' : `round ${r + 1}`
      console.log(`${label} ${side.name}: ${Math.round(res.rate)} deliveries/s, burst ${res.ms.toFixed(0)} ms, server CPU ${res.cpuMs.toFixed(0)} ms, publisher+clients-pool CPU ${((pub.user + pub.system) / 1000).toFixed(0)} ms, nats-server CPU (paced + burst) ${natsMs.toFixed(0)} ms, clients CPU (connect, paced + burst) ${clientsMs.toFixed(0)} ms, delivered ${res.delivered}/${res.expected}; load ${(await Bun.file('/proc/loadavg').text()).trim()}`)
      if (r >= 0) rates.get(side.name)!.push(res.rate)
    }
  }
  const bunRates = rates.get('bun')!
  for (const side of sides) {
    if (side.name === 'bun') continue
    const ratios = rates.get(side.name)!.map((x, i) => x / bunRates[i])
    console.log(`${side.name} / bun: ${ratios.map((x) => x.toFixed(2)).join(', ')} (median ${median(ratios).toFixed(2)})`)
  }
  for (const side of sides) side.publisher.close()
} finally {
  await bun.stop()
  for (const d of deployments.reverse()) await d.close()
}
