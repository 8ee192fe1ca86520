/**
 * SIGTERM and SIGINT, caught from the first moment of a process: an entry point traps them before
 * it loads anything else (loading takes a while on a busy machine), so a process stopped while it
 * starts (a container stopped at once, a rolling restart, a test's teardown) still stops cleanly
 * once it has started, instead of dying mid-start with 143. A start that does not finish within
 * `startGraceMs` of the signal (NATS unreachable, say) is abandoned: exit 0, as a stop before the
 * start would have been; nothing it began is unsafe to drop (leases expire, batches are guarded).
 * This module imports nothing.
 */
export type StopSignals = {
  /** The first signal received so far, if any. */
  readonly received: string | undefined
  /** Calls `stop` with the signal: at once if one came already, else when one comes (once). */
  onStop(stop: (signal: string) => void): void
}

export function trapStopSignals(startGraceMs = 5000): StopSignals {
  let received: string | undefined
  let stop: ((signal: string) => void) | undefined
  let called = false
  let abandon: ReturnType<typeof setTimeout> | undefined
  const fire = () => {
    if (called || !stop || !received) return
    called = true
    if (abandon) clearTimeout(abandon)
    stop(received)
  }
  const on = (signal: string) => () => {
    received ??= signal
    if (!stop) abandon ??= setTimeout(() => process.exit(0), startGraceMs)
    fire()
  }
  process.on('SIGTERM', on('SIGTERM'))
  process.on('SIGINT', on('SIGINT'))
  return {
    get received() {
      return received
    },
    onStop(fn) {
      stop = fn
      fire()
    },
  }
}
