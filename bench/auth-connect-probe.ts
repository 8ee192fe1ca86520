/**
 * `bun bench/auth-connect-probe.ts [n] [rounds] [--compare=<checkout>]`: only the connect-rate half
 * of bench/auth.ts, repeated: anonymous and JWT runs alternate on one node, and each round's ratio
 * (JWT / the anonymous run beside it) is printed, so a noisy machine shows as a spread of ratios
 * rather than one lucky or unlucky figure. With --compare, a second API node runs the code of
 * another checkout (say `git archive <commit>` unpacked, node_modules linked) on the same
 * deployment, and its rounds alternate with this one's: before and after measured in one run.
 * Each run also reads the API node's CPU time (all its threads, and its main thread alone, from
 * /proc/<pid>/task/<tid>/schedstat) from before its clients start until its sockets are closed, so
 * the cost of a connect is seen in µs of CPU, less at the mercy of a busy machine than a rate, and
 * prints what its other threads spent per connection by name (JSC's JIT and GC helpers,
 * mimalloc's scavenger): a JWT connect's extra cost is about half off the main thread.
 * With FANFARE_BENCH_PROFILE=<dir> the API nodes write CPU profiles there when they stop (read them
 * with bench/profile-summary.ts).
 */
import { readdirSync, readFileSync } from 'node:fs'
import { connectRate } from './auth'
import type { BenchContext } from './lib/context'
import { deploy } from './lib/fanfare'
import { freePort } from '../core/process'
import { spawnProc, waitReady } from '../test/e2e/harness'

const args = process.argv.slice(2).filter((a) => !a.startsWith('--'))
const compare = process.argv.find((a) => a.startsWith('--compare='))?.slice(10)
const n = Number(args[0] ?? 5000)
const rounds = Number(args[1] ?? 3)
const ctx: BenchContext = { mode: 'full', log: (m) => console.error(m), notes: [] }
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
/** ns of CPU a process has used: all its threads, and its main thread. */
function cpuNs(pid: number) {
  let all = 0
  let main = 0
  const byName = new Map<string, number>()
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    let ns = 0
    let name = ''
    try {
      ns = Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0])
      name = readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim()
    } catch {
      continue // a thread that ended meanwhile
    }
    all += ns
    if (Number(tid) === pid) main = ns
    else byName.set(name, (byName.get(name) ?? 0) + ns)
  }
  return { all, main, byName }
}
const d = await deploy()
const extra: { stop: () => Promise<unknown> }[] = []
try {
  const nodes: { name: string; url: string; pid: number }[] = []
  const api = await d.startApi()
  nodes.push({ name: 'this checkout', url: `ws://127.0.0.1:${api.port}/v1/ws`, pid: api.proc.proc.pid })
  if (compare) {
    const port = freePort()
    const proc = spawnProc('api-compare', `${compare}/api/src/main.ts`, { ...d.env.vars, PORT: String(port), HOST: '127.0.0.1' })
    extra.push(proc)
    await waitReady(`http://127.0.0.1:${port}`, [proc])
    nodes.push({ name: compare, url: `ws://127.0.0.1:${port}/v1/ws`, pid: proc.proc.pid })
  }
  const secret = d.env.vars.FANFARE_JWT_SECRET
  const ratios = new Map<string, number[]>(nodes.map((x) => [x.name, []]))
  const cpu = new Map(nodes.map((x) => [x.name, { anon: { all: [] as number[], main: [] as number[] }, jwt: { all: [] as number[], main: [] as number[] } }]))
  /** One run; its rate, and the node's CPU µs per connection (connect and close) when recorded. */
  const run = async (node: (typeof nodes)[number], jwt: boolean, record = true) => {
    await Bun.sleep(300) // the previous run's closes are done
    const before = cpuNs(node.pid)
    const rate = await connectRate(ctx, node.url, n, jwt ? secret : undefined)
    await Bun.sleep(300)
    const after = cpuNs(node.pid)
    const side = cpu.get(node.name)![jwt ? 'jwt' : 'anon']
    if (record) side.all.push((after.all - before.all) / 1000 / n), side.main.push((after.main - before.main) / 1000 / n)
    if (record) {
      const parts = [...after.byName].map(([k, v]) => [k, (v - (before.byName.get(k) ?? 0)) / 1000 / n] as const).filter(([, v]) => v > 0.5)
      console.log(`  ${jwt ? 'jwt' : 'anon'} other threads µs/conn: ${parts.map(([k, v]) => `${k} ${v.toFixed(1)}`).join(', ')}`)
    }
    return rate
  }
  // Warm-up of both sides on every node (the first run of a path compiles it), not recorded.
  for (const node of nodes) await run(node, false, false), await run(node, true, false)
  for (let r = 0; r < rounds; r++) {
    for (const node of r % 2 ? [...nodes].reverse() : nodes) {
      // Alternates which goes first, the anonymous run or the JWT one, and which node.
      const first = await run(node, !(r % 2))
      const second = await run(node, !!(r % 2))
      const ratio = r % 2 ? second / first : first / second
      ratios.get(node.name)!.push(ratio)
      console.log(`round ${r + 1} ${node.name}: ratio ${ratio.toFixed(2)}`)
    }
  }
  for (const [name, xs] of ratios) {
    const c = cpu.get(name)!
    const us = (xs: number[]) => median(xs).toFixed(1)
    console.log(`${name}: JWT/anonymous ratios ${xs.map((x) => x.toFixed(2)).join(' ')}; median ${median(xs).toFixed(2)}`)
    console.log(
      `${name}: API CPU µs per connection, medians: anonymous ${us(c.anon.all)} (main thread ${us(c.anon.main)}), JWT ${us(c.jwt.all)} (main thread ${us(c.jwt.main)})`,
    )
  }
} finally {
  await Promise.all(extra.map((p) => p.stop()))
  await d.close()
}
process.exit(0)
