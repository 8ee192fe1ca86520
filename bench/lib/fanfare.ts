import { jetstream, type JetStreamClient, type PubAck } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import { openLeaseBucketIfExists, workersView } from '../../core/leases'
import { ensureStreams, connectNats, changeFormatRecorded, type ChangeFormat } from '../../core/nats'
import { until } from '../../core/testing/wait'
import { freePort } from '../../core/process'
import { createTestEnv, type TestEnv } from '../../core/testing/env'
import { spawnProc, waitReady, type Proc } from '../../test/e2e/harness'

/** A fresh Fanfare deployment for one benchmark: its own database and streams, real processes. */
export type Deployment = {
  env: TestEnv
  nc: NatsConnection
  js: JetStreamClient
  /** The change format the deployment's change streams record (core/nats.ts ChangeFormat): the latest, as a new one's. */
  changes: ChangeFormat
  api?: { proc: Proc; url: string; port: number }
  workers: Proc[]
  startApi: (extraEnv?: Record<string, string>) => Promise<{ proc: Proc; url: string; port: number }>
  startWorker: (extraEnv?: Record<string, string>) => Proc
  close: () => Promise<void>
}

/**
 * With FANFARE_BENCH_PROFILE=<dir>, Fanfare's processes write CPU profiles there (bun --cpu-prof
 * through BUN_OPTIONS) when they stop; read them with bench/profile-summary.ts.
 */
const profiling = (): Record<string, string> =>
  process.env.FANFARE_BENCH_PROFILE ? { BUN_OPTIONS: `--cpu-prof --cpu-prof-dir=${process.env.FANFARE_BENCH_PROFILE}` } : {}

/**
 * The benchmarks measure throughput, not the limits: thousands of sockets and tens of thousands of
 * events per second from one address and one key would be refused by the defaults (README, Limits).
 */
export const BENCH_LIMITS: Record<string, string> = {
  FANFARE_WS_PUBLISHES_PER_SECOND: '1000000',
  FANFARE_WS_PUBLISH_BURST: '1000000',
  FANFARE_USER_OPS_PER_SECOND: '1000000',
  FANFARE_USER_OPS_BURST: '1000000',
  FANFARE_KEY_OPS_PER_SECOND: '10000000',
  FANFARE_KEY_OPS_BURST: '10000000',
  FANFARE_ANONYMOUS_OPS_PER_SECOND: '10000000',
  FANFARE_ANONYMOUS_OPS_BURST: '10000000',
  FANFARE_MAX_CONNECTIONS_PER_IP: '10000000',
  FANFARE_MAX_CONNECTIONS_PER_USER: '1000000',
  FANFARE_IP_CONNECTS_PER_SECOND: '1000000',
  FANFARE_IP_CONNECT_BURST: '1000000',
  FANFARE_AUTH_FAILURES_PER_MINUTE: '1000000',
}

/** Creates the env (fresh db + stream names), the streams, and a NATS connection for the bench. */
export async function deploy(overrides: Record<string, string> = {}, opts: { changes?: ChangeFormat } = {}): Promise<Deployment> {
  const env = await createTestEnv({ LOG_LEVEL: 'warn', ...BENCH_LIMITS, ...overrides })
  const nc = await connectNats(env.vars.NATS_URL, 'fanfare-bench')
  // `changes`: a deployment of an older version (`runs`: one message per change run).
  const jsm = await ensureStreams(nc, env.config, opts)
  const procs: Proc[] = []
  const d: Deployment = {
    env,
    nc,
    js: jetstream(nc),
    changes: await changeFormatRecorded(jsm, env.config),
    workers: [],
    startApi: async (extraEnv = {}) => {
      const port = freePort()
      const proc = spawnProc('api', 'api/src/main.ts', { ...env.vars, PORT: String(port), HOST: '127.0.0.1', ...profiling(), ...extraEnv })
      procs.push(proc)
      const url = `http://127.0.0.1:${port}`
      await waitReady(url, [proc])
      d.api = { proc, url, port }
      return d.api
    },
    startWorker: (extraEnv = {}) => {
      const proc = spawnProc(`worker-${d.workers.length + 1}`, 'stream-workers/src/main.ts', { ...env.vars, ...profiling(), ...extraEnv })
      procs.push(proc)
      d.workers.push(proc)
      return proc
    },
    close: async () => {
      await Promise.all(procs.map((p) => p.stop()))
      await nc.close()
      await env.cleanup()
    },
  }
  return d
}

/**
 * Publishes with a bounded number of acks outstanding; resolves when all are acknowledged, with
 * the stream sequence of each message in the order given.
 */
export async function publishAll(js: JetStreamClient, messages: Iterable<{ subject: string; body: string; id: string }>, inFlight = 1000): Promise<number[]> {
  const seqs: number[] = []
  let pending: Promise<PubAck>[] = []
  for (const m of messages) {
    pending.push(js.publish(m.subject, m.body, { msgID: m.id }))
    if (pending.length >= inFlight) {
      for (const ack of await Promise.all(pending)) seqs.push(ack.seq)
      pending = []
    }
  }
  for (const ack of await Promise.all(pending)) seqs.push(ack.seq)
  return seqs
}

/**
 * Waits until `count` workers are live and the partitions are spread over them (each holds at
 * least partitions/count, rounded down), so a measurement does not include lease hand-overs.
 */
export async function waitForWorkers(d: Deployment, count: number, timeoutMs = 60_000) {
  const partitions = d.env.config.FANFARE_PARTITIONS
  await until(
    `${count} workers holding all ${partitions} partitions`,
    async () => {
      for (const w of d.workers) if (w.proc.exitCode !== null) throw new Error(`${w.name} exited: ${w.output().slice(-2000)}`)
      const kv = await openLeaseBucketIfExists(d.nc, d.env.config)
      if (!kv) return false
      const view = (await workersView(kv)).filter((w) => w.partitions.length > 0)
      const held = view.reduce((s, w) => s + w.partitions.length, 0)
      return view.length === count && held === partitions && view.every((w) => w.partitions.length >= Math.floor(partitions / count))
    },
    timeoutMs,
    100,
  )
}

/** Batches a worker started with FANFARE_METRICS_PORT=`port` has applied (fanfare_batch_events_count). */
export async function batchesApplied(port: number): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()
  const line = text.split('\n').find((l) => l.startsWith('fanfare_batch_events_count'))
  return line ? Number(line.split(' ').pop()) : 0
}

/**
 * Waits until each worker (started with FANFARE_METRICS_PORT, one port each) has applied a batch
 * after this call: once the partitions are spread (waitForWorkers), a runner that just got one
 * still claims its fence and opens its consumer before it applies anything. Or until `done` says
 * the backlog is applied: a worker whose partitions the first worker had already emptied before
 * handing them over never applies another batch (smoke mode's small backlog; CI saw it time out
 * once).
 */
export async function waitForBatches(ports: number[], done: () => Promise<boolean>, timeoutMs = 30_000) {
  const before = await Promise.all(ports.map(batchesApplied))
  await until(
    `a batch applied by each of ${ports.length} workers`,
    async () => (await Promise.all(ports.map(batchesApplied))).every((n, i) => n > before[i]) || (await done()),
    timeoutMs,
    5,
  )
}
