/**
 * `bun bench/fanout-burst-probe.ts [seconds] [--changes=<format>] [--prof=<port>]`: the fan-out
 * burst of bench/fanout.ts (1,000 clients over 100 channels, 300 rounds of one-change runs) again
 * and again on one deployment and one set of clients, for at least `seconds` (default 10) and 5
 * bursts, after 3 unrecorded ones. Each burst prints its time and the CPU nats-server and the API
 * node spent in it (/proc), so a change to what crosses NATS shows in nats-server's share without
 * the connects and snapshots of a whole scenario around it. `--changes` makes the deployment record
 * another change format (core/nats.ts ChangeFormat: `batches` is live batches not compressed;
 * default the latest). With `--prof=<port>` (nats-server started with `--profile <port>`) a Go CPU
 * profile of the recorded bursts is written to /tmp/nats.pprof (read it with
 * bench/pprof-summary.ts).
 */
import { cpuOf, natsServerPid } from './lib/child'
import { startClientPool } from './lib/client-pool'
import { deploy } from './lib/fanfare'
import { fanfarePublisher } from './fanout'
import { TEST_NATS_URL } from '../core/testing/env'
import type { ChangeFormat } from '../core/nats'

const arg = (name: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3)
const seconds = Number(process.argv.slice(2).find((a) => !a.startsWith('--')) ?? 10)
const changes = arg('changes') as ChangeFormat | undefined
const prof = arg('prof')

const d = await deploy({}, changes ? { changes } : {})
const nats = natsServerPid(TEST_NATS_URL)
if (nats === undefined) throw new Error(`no nats-server process serves ${TEST_NATS_URL} on this machine`)
const api = await d.startApi()
const channels = Array.from({ length: 100 }, (_, i) => `leaderboard:burst${i}`)
const pool = startClientPool({ kind: 'fanfare', url: `ws://127.0.0.1:${api.port}/v1/ws`, n: 1000, channels }, 1)
const publisher = await fanfarePublisher(d)
try {
  await pool.ready()
  let version = 0
  const burst = async () => {
    await pool.reset()
    const nats0 = cpuOf(nats)
    const api0 = cpuOf(api.proc.proc.pid)
    const t0 = performance.now()
    for (let r = 0; r < 300; r++) {
      publisher.round(channels, ++version)
      if (r % 20 === 19) await publisher.flush()
    }
    await publisher.flush()
    while ((await pool.report()).count < 300_000) await Bun.sleep(10)
    return { ms: performance.now() - t0, natsMs: (cpuOf(nats) - nats0) * 1000, apiMs: (cpuOf(api.proc.proc.pid) - api0) * 1000 }
  }
  for (let i = 0; i < 3; i++) await burst()
  const profile = prof ? fetch(`http://127.0.0.1:${prof}/debug/pprof/profile?seconds=${seconds}`).then(async (r) => Bun.write('/tmp/nats.pprof', await r.arrayBuffer())) : undefined
  const started = performance.now()
  const bursts: Awaited<ReturnType<typeof burst>>[] = []
  while (performance.now() - started < seconds * 1000 || bursts.length < 5) bursts.push(await burst())
  await profile
  for (const b of bursts) console.log(`burst ${b.ms.toFixed(0)} ms, nats-server CPU ${b.natsMs.toFixed(0)} ms, API node CPU ${b.apiMs.toFixed(0)} ms`)
  const mean = (f: (b: (typeof bursts)[number]) => number) => (bursts.reduce((s, b) => s + f(b), 0) / bursts.length).toFixed(0)
  console.log(`${d.changes}: ${bursts.length} bursts, mean ${mean((b) => b.ms)} ms, nats-server ${mean((b) => b.natsMs)} ms, API node ${mean((b) => b.apiMs)} ms`)
} finally {
  publisher.close()
  await pool.stop()
  await d.close()
}
process.exit(0)
