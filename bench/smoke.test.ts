import { expect, test } from 'bun:test'
import { isGoodNumber } from './lib/report'
import { benchmarks, runBenchmarks } from './run'

// The smoke mode of `npm run bench`: tiny loads, so the benchmarks never rot. It checks only that
// every figure was produced; timings are reported, never asserted.
test(
  'every benchmark produces finite positive figures and baselines (smoke mode)',
  async () => {
    const run = await runBenchmarks('smoke', { log: () => {} })
    const groups = new Set(run.figures.map((f) => f.group))
    expect(groups.size).toBe(Object.keys(benchmarks).length)
    const bad = run.figures.filter((f) => !isGoodNumber(f.value) || !isGoodNumber(f.baseline))
    expect(bad).toEqual([])
  },
  300_000,
)
