/**
 * `bun bench/auth-connect-probe.ts [n] [rounds] [--compare=<checkout>]`: only the connect-rate half
 * of bench/auth.ts, repeated: anonymous and JWT runs alternate on one node, and each round's ratio
 * (JWT / the anonymous run beside it) is printed, so a noisy machine shows as a spread of ratios
 * rather than one lucky or unlucky figure. With --compare, a second API node runs the code of
 * another checkout (say `git archive <commit>` unpacked, node_modules linked) on the same
 * deployment, and its rounds alternate with this one's: before and after measured in one run.
 * With FANFARE_BENCH_PROFILE=<dir> the API nodes write CPU profiles there when they stop (read them
 * with bench/profile-summary.ts).
 */
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
const d = await deploy()
const extra: { stop: () => Promise<unknown> }[] = []
try {
  const nodes: { name: string; url: string }[] = []
  const api = await d.startApi()
  nodes.push({ name: 'this checkout', url: `ws://127.0.0.1:${api.port}/v1/ws` })
  if (compare) {
    const port = freePort()
    const proc = spawnProc('api-compare', `${compare}/api/src/main.ts`, { ...d.env.vars, PORT: String(port), HOST: '127.0.0.1' })
    extra.push(proc)
    await waitReady(`http://127.0.0.1:${port}`, [proc])
    nodes.push({ name: compare, url: `ws://127.0.0.1:${port}/v1/ws` })
  }
  const secret = d.env.vars.FANFARE_JWT_SECRET
  const ratios = new Map<string, number[]>(nodes.map((x) => [x.name, []]))
  for (const node of nodes) await connectRate(ctx, node.url, n) // warm-up
  for (let r = 0; r < rounds; r++) {
    for (const node of r % 2 ? [...nodes].reverse() : nodes) {
      // Alternates which goes first, the anonymous run or the JWT one, and which node.
      const first = await connectRate(ctx, node.url, n, r % 2 ? undefined : secret)
      const second = await connectRate(ctx, node.url, n, r % 2 ? secret : undefined)
      const ratio = r % 2 ? second / first : first / second
      ratios.get(node.name)!.push(ratio)
      console.log(`round ${r + 1} ${node.name}: ratio ${ratio.toFixed(2)}`)
    }
  }
  for (const [name, xs] of ratios) console.log(`${name}: JWT/anonymous ratios ${xs.map((x) => x.toFixed(2)).join(' ')}; median ${median(xs).toFixed(2)}`)
} finally {
  await Promise.all(extra.map((p) => p.stop()))
  await d.close()
}
process.exit(0)
