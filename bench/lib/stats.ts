/** Small statistics helpers for the benchmarks. */

/** The q-quantile (0..1) of `values` by nearest rank; NaN when empty. Sorts a copy. */
export function quantile(values: ArrayLike<number>, q: number): number {
  if (values.length === 0) return Number.NaN
  const sorted = Float64Array.from(values as ArrayLike<number>).sort()
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))
  return sorted[i]
}

/** The median of `values` (the mean of the middle two for an even count); NaN when empty. */
export function median(values: ArrayLike<number>): number {
  if (values.length === 0) return Number.NaN
  const sorted = Float64Array.from(values as ArrayLike<number>).sort()
  const m = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[m] : (sorted[m - 1] + sorted[m]) / 2
}

/**
 * The order in which two sides A and B take turns over `runsPerSide` runs each: blocks of A B B A
 * (then A B for an odd remainder). Each side runs first and second equally often and a drift that
 * is linear in time weighs the same on both, which a plain A B A B ... does not give: there B
 * always runs after A.
 */
export function abba<T>(a: T, b: T, runsPerSide: number): T[] {
  const order: T[] = []
  for (let i = 0; i < runsPerSide; i++) order.push(...(i % 2 === 0 ? [a, b] : [b, a]))
  return order
}

/**
 * Index of the first element >= `value` in `sorted` (ascending), by binary search; `sorted.length`
 * when there is none.
 */
export function firstAtLeast(sorted: ArrayLike<number>, value: number): number {
  let lo = 0
  let hi = sorted.length
  while (lo < hi) {
    const mid = (lo + hi) >> 1
    if (sorted[mid] >= value) hi = mid
    else lo = mid + 1
  }
  return lo
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
