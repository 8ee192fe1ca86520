/** Small statistics helpers for the benchmarks. */

/** The q-quantile (0..1) of `values` by nearest rank; NaN when empty. Sorts a copy. */
export function quantile(values: ArrayLike<number>, q: number): number {
  if (values.length === 0) return Number.NaN
  const sorted = Float64Array.from(values as ArrayLike<number>).sort()
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))
  return sorted[i]
}

/** p50, p99 and max of latencies (ms). */
export type LatencySummary = { count: number; p50: number; p99: number; max: number }

export function summarize(values: ArrayLike<number>): LatencySummary {
  if (values.length === 0) return { count: 0, p50: Number.NaN, p99: Number.NaN, max: Number.NaN }
  const sorted = Float64Array.from(values as ArrayLike<number>).sort()
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]
  return { count: sorted.length, p50: at(0.5), p99: at(0.99), max: sorted[sorted.length - 1] }
}

/**
 * Wall-clock milliseconds with sub-millisecond resolution, comparable between processes of one
 * machine (timeOrigin is the wall clock at process start): the timestamp put in payloads.
 */
export const nowMs = (): number => performance.timeOrigin + performance.now()
