/**
 * Probe (not part of `bench/run.ts`): what worker processes cost with nothing to apply, i.e. what
 * each process adds whatever the load (leases, heartbeats, idle pulls, rebuild polls, outbox
 * sweeper, topology keeper). Starts 1 and then 2 idle workers on a fresh deployment served by a
 * private nats-server (so that other work on the shared one is not counted), and reads over
 * `--seconds` (default 20, after 5 s to settle) the CPU seconds of the workers (by thread), of this
 * deployment's Postgres backends and of the private nats-server.
 *
 *   flock /tmp/bench.lock node_modules/.bin/bun bench/idle-workers-probe.ts [--seconds=20] [--ttl=3000]
 */
import postgres from 'postgres'
import { freePort } from '../core/process'
import { deploy, waitForWorkers } from './lib/fanfare'
import { cpuOf, threadSecondsOf } from './lib/child'

const arg = (name: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1]
const SECONDS = Number(arg('seconds') ?? 20)
const TTL = arg('ttl') ?? '3000'

const port = freePort()
const dir = `/tmp/idle-workers-probe-nats-${process.pid}`
const nats = Bun.spawn(['nats-server', '-a', '127.0.0.1', '-p', String(port), '-js', '-sd', dir], { stdout: 'ignore', stderr: 'ignore' })
await Bun.sleep(500)
try {
  for (const workers of [1, 2]) {
    const d = await deploy({ FANFARE_LEASE_TTL_MS: TTL, NATS_URL: `nats://127.0.0.1:${port}` })
    const db = new URL(d.env.vars.DATABASE_URL).pathname.slice(1)
    const sql = postgres(d.env.vars.DATABASE_URL, { max: 1, onnotice: () => {} })
    try {
      for (let i = 0; i < workers; i++) d.startWorker()
      await waitForWorkers(d, workers)
      await Bun.sleep(5000)
      const backends = (await sql`select pid from pg_stat_activity where datname = ${db} and pid <> pg_backend_pid()`).map((r) => r.pid as number)
      const read = () => ({
        threads: d.workers.map((w) => threadSecondsOf(w.proc.pid)),
        backends: backends.reduce((s, p) => s + (cpuOf(p) || 0), 0),
        nats: cpuOf(nats.pid),
      })
      const a = read()
      const t0 = performance.now()
      await Bun.sleep(SECONDS * 1000)
      const b = read()
      const s = (performance.now() - t0) / 1000
      const core = (x: number) => (x / s).toFixed(4)
      console.log(
        JSON.stringify({
          workers,
          'cores, each worker js/jit/other': b.threads.map((t, i) => `${core(t.js - a.threads[i].js)}/${core(t.jit - a.threads[i].jit)}/${core(t.other - a.threads[i].other)}`),
          'cores, backends': core(b.backends - a.backends),
          'cores, nats-server': core(b.nats - a.nats),
          load: (await Bun.file('/proc/loadavg').text()).trim(),
        }),
      )
    } finally {
      await sql.end()
      await d.close()
    }
  }
} finally {
  nats.kill()
  await nats.exited
  Bun.spawnSync(['rm', '-rf', dir])
}
