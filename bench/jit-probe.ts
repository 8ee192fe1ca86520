/**
 * Probe (not part of `bench/run.ts`): what JSC compiles in one worker process while it applies the
 * projection benchmark's backlog. The worker runs with JSC's compile reports on
 * (BUN_JSC_reportBaselineCompileTimes / reportDFGCompileTimes / reportFTLCompileTimes), its stderr
 * goes to a file, and the compiles are counted by function and tier, split into those before the
 * first `--warmup` events were applied and those after (steady state: what a long-running worker
 * keeps compiling). A function compiled again and again after warm-up is a deoptimization loop or
 * code made anew per batch (new Function, eval). Also prints the worker's CPU per event after
 * warm-up, split by thread as bench/projection-probe.ts does (JS thread, JSC's compiler threads,
 * the rest), and its rate.
 *
 *   flock /tmp/bench.lock node_modules/.bin/bun bench/jit-probe.ts [--events=60000] [--warmup=20000]
 *     [--env=K=V,K=V]  extra environment for the worker (e.g. BUN_JSC_printEachOSRExit=1)
 *     [--top=40]  how many functions to list
 */
import { openSync, readFileSync, statSync } from 'node:fs'
import postgres from 'postgres'
import { storedScore } from './lib/events'
import { backlogOf } from './lib/backlog'
import { deploy, publishAll, waitForWorkers } from './lib/fanfare'
import { threadSecondsOf } from './lib/child'
import { ROOT } from '../test/e2e/harness'

const arg = (name: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=').slice(1).join('=')
const EVENTS = Number(arg('events') ?? 60_000)
const WARMUP = Number(arg('warmup') ?? 20_000)
const TOP = Number(arg('top') ?? 40)
const EXTRA: Record<string, string> = Object.fromEntries((arg('env') ?? '').split(',').filter(Boolean).map((kv) => kv.split('=') as [string, string]))
const REPORTS = { BUN_JSC_reportBaselineCompileTimes: '1', BUN_JSC_reportDFGCompileTimes: '1', BUN_JSC_reportFTLCompileTimes: '1' }

const d = await deploy({ FANFARE_LEASE_TTL_MS: '3000' })
const sql = postgres(d.env.vars.DATABASE_URL, { max: 1, onnotice: () => {} })
const logPath = `/tmp/jit-probe-${process.pid}.log`
try {
  const { FANFARE_SUBJECT_PREFIX: prefix, FANFARE_PARTITIONS: partitions } = d.env.config
  const messages = Array.from({ length: EVENTS }, (_, i) => storedScore(prefix, partitions, 'jit', i))
  const seqs = await publishAll(d.js, messages)
  const backlog = backlogOf('leaderboards', messages.map((m) => m.subject), seqs)
  const fd = openSync(logPath, 'w')
  const env: Record<string, string> = {}
  for (const [k, v] of Object.entries({ ...process.env, ...d.env.vars, ...REPORTS, ...EXTRA })) if (v !== undefined) env[k] = v
  const worker = Bun.spawn([process.execPath, 'stream-workers/src/main.ts'], { cwd: ROOT, env, stdout: fd, stderr: fd })
  d.workers.push({ name: 'worker-1', proc: worker, output: () => readFileSync(logPath, 'utf8').slice(-2000), stop: async () => (worker.kill(), await worker.exited) })
  await waitForWorkers(d, 1)
  const t0 = performance.now()
  while ((await backlog.progress(sql)).applied < WARMUP) await Bun.sleep(10)
  const mark = statSync(logPath).size
  const cpu1 = threadSecondsOf(worker.pid)
  const load1 = readFileSync('/proc/loadavg', 'utf8').trim()
  const t1 = performance.now()
  while ((await backlog.progress(sql)).applied < EVENTS) await Bun.sleep(10)
  const t2 = performance.now()
  const cpu2 = threadSecondsOf(worker.pid)
  worker.kill()
  await worker.exited
  const text = readFileSync(logPath)
  const count = (part: string) => {
    const byFn = new Map<string, { n: number; ms: number }>()
    let total = 0
    let ms = 0
    for (const line of part.split('\n')) {
      // "Optimized f#Hash:[..., LLIntFunctionCall, 21 (StrictMode)] using DFG with DFG into 352 bytes in 3.02 ms."
      const m = /^Optimized (.*?):\[.*?, (\w+?)(?:FunctionCall|FunctionConstruct|Module|Program|Eval)?, (\d+)[^\]]*\] using (\w+) .* in ([\d.]+) ms/.exec(line)
      if (!m) continue
      const key = `${m[4].padEnd(15)} ${m[1]} (${m[3]} bytecodes)`
      const e = byFn.get(key) ?? byFn.set(key, { n: 0, ms: 0 }).get(key)!
      e.n++
      e.ms += Number(m[5])
      total++
      ms += Number(m[5])
    }
    return { byFn, total, ms }
  }
  const report = (title: string, part: string, events: number) => {
    const { byFn, total, ms } = count(part)
    console.log(`\n${title}: ${total} compiles, ${ms.toFixed(0)} ms compile time (${((ms * 1000) / events).toFixed(1)} us per event)`)
    const rows = [...byFn.entries()].sort((a, b) => b[1].ms - a[1].ms).slice(0, TOP)
    for (const [k, v] of rows) console.log(`${String(v.n).padStart(5)} x ${v.ms.toFixed(1).padStart(8)} ms  ${k}`)
  }
  console.log(`jit probe: ${EVENTS} events, warm-up ${WARMUP}; load ${readFileSync('/proc/loadavg', 'utf8').trim()}; log ${logPath}`)
  console.log(`warm-up ${((t1 - t0) / 1000).toFixed(1)} s, rest ${((t2 - t1) / 1000).toFixed(1)} s (load at its start ${load1})`)
  const us = (k: 'js' | 'jit' | 'other') => (((cpu2[k] - cpu1[k]) * 1e6) / (EVENTS - WARMUP)).toFixed(1)
  console.log(`after warm-up: ${Math.round((EVENTS - WARMUP) / ((t2 - t1) / 1000))} events/s; worker CPU per event, us: JS ${us('js')} / JIT ${us('jit')} / other ${us('other')}`)
  console.log(`whole run, worker CPU s: JS ${cpu2.js.toFixed(2)} / JIT ${cpu2.jit.toFixed(2)} / other ${cpu2.other.toFixed(2)}`)
  report('until warm-up', text.subarray(0, mark).toString(), WARMUP)
  report('after warm-up', text.subarray(mark).toString(), EVENTS - WARMUP)
} finally {
  await sql.end()
  await d.close()
}
