/** What the sweep needs of one socket. */
export type Listened = {
  /** `Liveness.sweeps` when its client was last heard from (any frame, or a pong). */
  heard: number
}

/** Sweeps per timeout: a sweep runs every timeout / SWEEPS. */
const SWEEPS = 4
/**
 * Pings (or closes) per event-loop turn. Each is a socket write (~10 us on a loaded 2-core
 * machine): 19,000 in one turn held the loop 170-270 ms (bench/liveness-probe.ts).
 */
const SLICE = 500

export type Liveness<S extends Listened> = {
  /**
   * Sweeps run so far: what a socket stores in `heard` whenever its client is heard from (a
   * counter, not a clock: nothing to read per frame, and a stalled event loop, which also holds
   * back the frames that would have been read, cannot time out a healthy client).
   */
  readonly sweeps: number
  /** Starts the sweeps if they are not running (call when a socket opens); they stop by themselves once no socket is left. */
  wake: () => void
  /** One sweep now (the timer's; exposed for tests and the probe): resolves once its pings and closes are all done. */
  sweep: () => Promise<{ pinged: number; closed: number }>
  /** Stops the sweeps. */
  stop: () => void
}

/**
 * Finds clients that went silent without a close (no FIN: a lost signal, a laptop lid, a dead NAT
 * entry), whether or not the node is sending to them. Bun's own idle timeout cannot: it restarts at
 * every frame Bun sends, so a silent client on a busy channel was never timed out (a probe kept one
 * present past 60 s with the timeout at 8 s), its presence lied, and its queue grew.
 *
 * Server pings, client pongs (as Centrifugo and Ably do): every WebSocket client answers a ping by
 * itself, browsers included. One timer per node, every `timeoutMs / 4`, walks the sockets once:
 * - one not heard from for more than half the timeout is pinged (again at the next sweep);
 * - one not heard from for more than the timeout is closed (`close`).
 * So a silent client is closed between the timeout and the timeout plus one sweep after it was last
 * heard, a healthy quiet one is pinged about every three sweeps and has at least half the timeout
 * to answer, and nothing is done per frame sent. Cost: O(sockets) per sweep (a walk of 19,000
 * took ~0.1 ms), and one write per ping, done SLICE at a time so other work goes on between.
 */
export function createLiveness<S extends Listened>(deps: {
  timeoutMs: number
  sockets: () => { size: number; values: () => Iterable<S> }
  ping: (s: S) => void
  close: (s: S) => void
}): Liveness<S> {
  let sweeps = 0
  let timer: ReturnType<typeof setInterval> | undefined
  const stop = () => {
    if (timer !== undefined) clearInterval(timer)
    timer = undefined
  }
  /** Pings (or closes) the sockets still due, SLICE per turn; one heard from meanwhile is left alone. */
  const act = (due: S[], before: number, f: (s: S) => void, done: () => void) => {
    let i = 0
    const slice = () => {
      for (const end = Math.min(due.length, i + SLICE); i < end; i++) if (due[i].heard < before) f(due[i])
      if (i < due.length) setImmediate(slice)
      else done()
    }
    slice()
  }
  const sweep = async () => {
    const sockets = deps.sockets()
    if (sockets.size === 0) {
      stop()
      return { pinged: 0, closed: 0 }
    }
    const now = ++sweeps
    const quiet: S[] = []
    const gone: S[] = []
    // Heard during sweep interval h (after sweep h ran): by sweep `now`, silent for more than
    // (now - h - 1) intervals.
    for (const s of sockets.values()) {
      const silent = now - s.heard - 1
      if (silent >= SWEEPS) gone.push(s)
      else if (silent >= SWEEPS / 2) quiet.push(s)
    }
    await new Promise<void>((done) => act(gone, now - SWEEPS, deps.close, done))
    await new Promise<void>((done) => act(quiet, now - SWEEPS / 2, deps.ping, done))
    return { pinged: quiet.length, closed: gone.length }
  }
  return {
    get sweeps() {
      return sweeps
    },
    wake: () => {
      if (timer !== undefined) return
      timer = setInterval(() => void sweep(), deps.timeoutMs / SWEEPS)
      // Never what keeps a process alive.
      timer.unref?.()
    },
    sweep,
    stop,
  }
}
