/**
 * `bun bench/profile-summary.ts <file.cpuprofile> [top]`: the functions with the most self time in
 * a CPU profile written by `bun --cpu-prof` (set FANFARE_BENCH_PROFILE=<dir> when running the
 * bench to profile its API and worker processes).
 */
type Node = { id: number; hitCount?: number; callFrame: { functionName: string; url: string; lineNumber: number } }

export function topSelf(profile: { nodes: Node[]; samples?: number[] }, top = 15) {
  const hits = new Map<string, number>()
  let total = 0
  for (const n of profile.nodes) {
    const h = n.hitCount ?? 0
    total += h
    const f = n.callFrame
    const key = `${f.functionName || '(anonymous)'} ${f.url.replace(/^.*node_modules\//, '').replace(/^.*\/main\//, '')}:${f.lineNumber + 1}`
    hits.set(key, (hits.get(key) ?? 0) + h)
  }
  return [...hits.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, top)
    .map(([fn, h]) => ({ fn, pct: (100 * h) / Math.max(1, total) }))
}

if (import.meta.main) {
  const [file, top] = process.argv.slice(2)
  const rows = topSelf(await Bun.file(file).json(), Number(top ?? 15))
  for (const r of rows) console.log(`${r.pct.toFixed(1).padStart(5)}%  ${r.fn}`)
}
