/**
 * `bun bench/pprof-summary.ts <profile> [top]`: the functions with the most self ("flat") and
 * total ("cum") time in a Go CPU profile, such as nats-server's
 * (`nats-server --profile <port>`, then `curl -o p.pb 127.0.0.1:<port>/debug/pprof/profile?seconds=N`;
 * bench/batch-store-probe.ts --prof=<port> starts its server so). No Go toolchain needed.
 */
import { gunzipSync } from 'node:zlib'
import { Profile } from 'pprof-format'

export function summarize(profile: Profile, top = 30) {
  const names = profile.stringTable.strings
  const fnName = new Map(profile.function.map((f) => [Number(f.id), names[Number(f.name)]]))
  // A location's functions, innermost first (inlined calls share a location).
  const fnsAt = new Map(profile.location.map((l) => [Number(l.id), l.line.map((ln) => fnName.get(Number(ln.functionId)) ?? '?')]))
  const flat = new Map<string, number>()
  const cum = new Map<string, number>()
  let total = 0
  for (const s of profile.sample) {
    // The last value is the CPU time (nanoseconds); the first, the sample count.
    const w = Number(s.value[s.value.length - 1])
    total += w
    const stack = s.locationId.flatMap((id) => fnsAt.get(Number(id)) ?? [])
    if (stack.length > 0) flat.set(stack[0], (flat.get(stack[0]) ?? 0) + w)
    for (const fn of new Set(stack)) cum.set(fn, (cum.get(fn) ?? 0) + w)
  }
  const rank = (m: Map<string, number>) =>
    [...m]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([fn, w]) => ({ fn, pct: (100 * w) / Math.max(1, total) }))
  return { totalMs: total / 1e6, flat: rank(flat), cum: rank(cum) }
}

if (import.meta.main) {
  const [file, top] = process.argv.slice(2)
  const bytes = new Uint8Array(await Bun.file(file).arrayBuffer())
  const { totalMs, flat, cum } = summarize(Profile.decode(bytes[0] === 0x1f && bytes[1] === 0x8b ? gunzipSync(bytes) : bytes), Number(top ?? 30))
  console.log(`${totalMs.toFixed(0)} ms of CPU samples`)
  for (const [title, rows] of [['flat', flat], ['cum', cum]] as const) {
    console.log(`-- ${title}`)
    for (const r of rows) console.log(`${r.pct.toFixed(1).padStart(5)}%  ${r.fn}`)
  }
}
