import { ROOT } from './child'

/** What every benchmark gets from the runner. */
export type BenchContext = {
  mode: 'smoke' | 'full'
  log: (message: string) => void
  /** Notes for the report (dropped messages, limits hit, profiles taken). */
  notes: string[]
}

export const BUN = process.execPath
export { ROOT }

/** Picks the smoke or the full value. */
export const pick = <T>(ctx: BenchContext, smoke: T, full: T): T => (ctx.mode === 'smoke' ? smoke : full)

/** Sleeps until a wall-clock instant (performance.now() based), for paced loops. */
export async function sleepUntil(t: number) {
  const d = t - performance.now()
  if (d > 0) await Bun.sleep(d)
}
