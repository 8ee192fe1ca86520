/**
 * `npm run bench` (full, a few minutes) and `npm run bench:smoke` (tiny loads, seconds): runs every
 * benchmark against real processes, prints a table of figures with baselines measured in the same
 * run, and writes bench/results/latest.md (full), bench/results/<names>.md (full, `--only=<names>`)
 * or bench/results/smoke.md (smoke).
 */
import postgres from 'postgres'
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { TEST_PG_URL } from '../core/testing/env'
import { ROOT } from './lib/child'
import type { BenchContext } from './lib/context'
import { describeMachine, type Machine } from './lib/machine'
import { markdownTable, targetMet, textTable, type Figure } from './lib/report'
import { auth } from './auth'
import { presence } from './presence'
import { connections } from './connections'
import { e2e } from './e2e'
import { bigChannel, fanout } from './fanout'
import { ingest } from './ingest'
import { projection } from './projection'
import { reactions } from './reactions'
import { matches } from './matches'
import { observability } from './observability'

export type BenchRun = { machine: Machine; figures: Figure[]; notes: string[]; seconds: number }

/** The benchmarks, in run order. `only` (names) selects some. */
export const benchmarks: Record<string, (ctx: BenchContext) => Promise<Figure[]>> = {
  fanout,
  bigChannel,
  e2e,
  projection,
  connections,
  ingest,
  auth,
  presence,
  reactions,
  matches,
  observability,
}

export async function runBenchmarks(mode: 'smoke' | 'full', options: { only?: string[]; log?: (m: string) => void } = {}): Promise<BenchRun> {
  const started = performance.now()
  const ctx: BenchContext = { mode, log: options.log ?? ((m) => console.error(m)), notes: [] }
  const sql = postgres(TEST_PG_URL, { max: 1, onnotice: () => {} })
  const [{ server_version }] = await sql`show server_version`
  await sql.end()
  const machine = await describeMachine(`PostgreSQL ${server_version}`)
  const figures: Figure[] = []
  for (const [name, bench] of Object.entries(benchmarks)) {
    if (options.only && !options.only.includes(name)) continue
    ctx.log(`== ${name}`)
    figures.push(...(await bench(ctx)))
  }
  machine.loadAverage = (await describeMachine(machine.postgres)).loadAverage.map((l, i) => Math.max(l, machine.loadAverage[i]))
  return { machine, figures, notes: ctx.notes, seconds: (performance.now() - started) / 1000 }
}

export function renderMarkdown(run: BenchRun, mode: string, extra = ''): string {
  const m = run.machine
  const missed = run.figures.filter((f) => targetMet(f) === false)
  return `# Fanfare benchmarks (${mode} mode)

Run ${new Date().toISOString()} in ${run.seconds.toFixed(0)} s with \`npm run bench${mode === 'smoke' ? ':smoke' : ''}\`.

## Machine
- CPU: ${m.cpu}, ${m.cores} cores; memory ${m.memoryGiB} GiB (${m.freeMemoryGiB} GiB free at start)
- Load average during the run (1/5/15 min, highest seen): ${m.loadAverage.join(' / ')}
- Bun ${m.bun}, Node.js ${m.node}, ${m.natsServer}, ${m.postgres}; open files limit ${m.ulimitNoFile}
- Everything on loopback: Fanfare processes, baselines, load clients, Postgres and NATS share the machine.

## Figures
Ratio = Fanfare / baseline. For latencies and memory lower is better, for rates higher is better.

${markdownTable(run.figures)}

Targets met: ${run.figures.filter((f) => targetMet(f) === true).length} of ${run.figures.filter((f) => f.target).length}.
${missed.length ? `Missed: ${missed.map((f) => `${f.name} vs ${f.baselineName}`).join('; ')}.` : ''}

## Notes
${run.notes.length ? run.notes.map((n) => `- ${n}`).join('\n') : '- none'}
${extra}`
}

if (import.meta.main) {
  const args = process.argv.slice(2)
  const mode = args.includes('--smoke') ? 'smoke' : 'full'
  const only = args.find((a) => a.startsWith('--only='))?.slice(7).split(',')
  const run = await runBenchmarks(mode, { only })
  console.log(textTable(run.figures))
  const dir = join(ROOT, 'bench', 'results')
  mkdirSync(dir, { recursive: true })
  // A partial run (--only) never replaces the full report: it is written beside it, by its names.
  const file = join(dir, mode === 'smoke' ? 'smoke.md' : only ? `${only.join('-')}.md` : 'latest.md')
  // Findings (why a target is missed, from profiles) are written by hand next to the results and
  // carried into every report so that the figures are never shown without them.
  const findings = join(ROOT, 'bench', 'findings.md')
  writeFileSync(file, renderMarkdown(run, mode, existsSync(findings) ? `\n${readFileSync(findings, 'utf8')}` : ''))
  writeFileSync(file.replace(/\.md$/, '.json'), `${JSON.stringify(run, null, 2)}\n`)
  console.error(`wrote ${file} (${run.seconds.toFixed(0)} s)`)
  process.exit(0)
}
