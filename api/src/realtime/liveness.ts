/** What the sweep needs of one socket. */
export type Listened = {
  /** `Liveness.sweeps` when its client was last heard from (any frame, or a pong). */
  heard: number
}

/** Sweeps per timeout: a sweep runs every timeout / SWEEPS. */
const SWEEPS = 4

export type Liveness<S extends Listened> = {
  /**
   * Sweeps run so far: what a socket stores in `heard` whenever its client is heard from (a
   * counter, not a clock: nothing to read per frame, and a stalled event loop, which also holds
   * back the frames that would have been read, cannot time out a healthy client).
   */
  readonly sweeps: number
  /** Starts the sweeps if they are not running (call when a socket opens); they stop by themselves once no socket is left. */
  wake: () => void
  /** One sweep now (the timer's; exposed for the probe that measures it). */
  sweep: () => { pinged: number; closed: number }
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
 * to answer, and nothing is done per frame sent. Cost: O(sockets) per sweep.
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
  const sweep = () => {
    const sockets = deps.sockets()
    if (sockets.size === 0) {
      stop()
      return { pinged: 0, closed: 0 }
    }
    const now = ++sweeps
    let pinged = 0
    let closed = 0
    // Heard during sweep interval h (after sweep h ran): by sweep `now`, silent for more than
    // (now - h - 1) intervals. Closing here may delete from `sockets`: a Map's iterator allows it.
    for (const s of sockets.values()) {
      const silent = now - s.heard - 1
      if (silent >= SWEEPS) {
        closed++
        deps.close(s)
      } else if (silent >= SWEEPS / 2) {
        pinged++
        deps.ping(s)
      }
    }
    return { pinged, closed }
  }
  return {
    get sweeps() {
      return sweeps
    },
    wake: () => {
      if (timer !== undefined) return
      timer = setInterval(sweep, deps.timeoutMs / SWEEPS)
      // Never what keeps a process alive.
      timer.unref?.()
    },
    sweep,
    stop,
  }
}
