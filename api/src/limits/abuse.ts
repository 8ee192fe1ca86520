/**
 * Watches one WebSocket's refused commands to tell a client that hit a limit now and then from one
 * that ignores it. A refusal by a budget of `perSecond` weighs `1 / perSecond` seconds of that
 * budget; the connection is abusive once the weight refused within the last `windowMs` exceeds
 * `factor` times the window. With the defaults (3, 5 s): more than 3x the allowed rate refused,
 * sustained over 5 s (for a limit of 20/s, more than 300 refusals in 5 s).
 */
export type AbuseMeter = {
  /** Records one refusal by a budget of `perSecond`; true once the connection is abusive. */
  refused(perSecond: number): boolean
}

/** The window is kept as 10 slots, so it slides in steps of a tenth of itself. */
const SLOTS = 10

export function abuseMeter(opts: { windowMs: number; factor: number; now?: () => number }): AbuseMeter {
  const now = opts.now ?? (() => performance.now())
  const slotMs = opts.windowMs / SLOTS
  const limit = (opts.factor * opts.windowMs) / 1000
  const slotOf = new Array<number>(SLOTS).fill(-Infinity)
  const weight = new Array<number>(SLOTS).fill(0)
  return {
    refused(perSecond) {
      const current = Math.floor(now() / slotMs)
      const i = ((current % SLOTS) + SLOTS) % SLOTS
      if (slotOf[i] !== current) {
        slotOf[i] = current
        weight[i] = 0
      }
      weight[i] += 1 / perSecond
      let total = 0
      for (let k = 0; k < SLOTS; k++) if (slotOf[k] > current - SLOTS) total += weight[k]
      // The tolerance keeps a sum of exactly the limit (in floating point) on the right side of it.
      return total > limit + 1e-9
    },
  }
}
