import type { Socket } from 'bun'
import { freePort } from '../e2e/harness'

/**
 * A TCP proxy between a client and one API node that the test breaks on purpose: `cut()` ends
 * every connection (a RST-like loss: both sides see it closed), `pause()` stops bytes flowing both
 * ways without closing anything (a half-open connection: a dead NAT entry, a laptop lid), and
 * `delay(ms)` holds each chunk that long before passing it on. (test/cluster/tcp-proxy.ts cuts and
 * stalls links between servers; this one adds delays, and counts the client's connections.)
 */
export type FaultProxy = {
  /** `http://127.0.0.1:<port>`: give it to the client instead of the node's URL. */
  url: string
  /** Connections open now. */
  readonly open: number
  /** Connections accepted so far. */
  readonly accepted: number
  cut: () => void
  /** Holds every byte, both ways, on the connections open now and those to come, until `resume()`. */
  pause: () => void
  resume: () => void
  delay: (ms: number) => void
  stop: () => void
}

type Side = { socket?: Socket<Pair>; queue: Uint8Array[]; held: { at: number; data: Uint8Array }[] }
type Pair = { client: Side; server: Side; dead: boolean }

export function startFaultProxy(target: string): FaultProxy {
  const { hostname, port: targetPort } = new URL(target)
  const port = freePort()
  const pairs = new Set<Pair>()
  let paused = false
  let delayMs = 0
  let accepted = 0
  let cutting = false

  const flush = (side: Side) => {
    const s = side.socket
    if (!s) return
    while (side.queue.length > 0) {
      const chunk = side.queue[0]
      const n = s.write(chunk)
      if (n < chunk.length) {
        side.queue[0] = chunk.subarray(n)
        return
      }
      side.queue.shift()
    }
  }
  /** Passes on the chunks held for `to` that are due, in order; what comes later waits for them. */
  const release = (pair: Pair, to: Side) => {
    if (paused || pair.dead) return
    while (to.held.length > 0 && to.held[0].at <= Date.now()) to.queue.push(to.held.shift()!.data)
    flush(to)
    if (to.held.length > 0) setTimeout(() => release(pair, to), Math.max(1, to.held[0].at - Date.now()))
  }
  // Paused, bytes are held, not dropped: TCP would send them again once the path is back.
  const pass = (pair: Pair, to: Side, data: Uint8Array) => {
    if (pair.dead) return
    to.held.push({ at: Date.now() + delayMs, data: new Uint8Array(data) })
    if (to.held.length === 1) setTimeout(() => release(pair, to), delayMs)
  }
  const kill = (pair: Pair) => {
    if (pair.dead) return
    pair.dead = true
    pairs.delete(pair)
    // What one side sent before it closed reaches the other (a close frame among it) unless cut.
    for (const side of [pair.client, pair.server]) {
      if (!cutting) for (const h of side.held.splice(0)) side.queue.push(h.data)
      flush(side)
      side.socket?.end()
    }
  }

  const listener = Bun.listen<Pair>({
    hostname: '127.0.0.1',
    port,
    socket: {
      open(client) {
        accepted++
        const pair: Pair = { client: { socket: client, queue: [], held: [] }, server: { queue: [], held: [] }, dead: false }
        client.data = pair
        pairs.add(pair)
        void Bun.connect<Pair>({
          hostname,
          port: Number(targetPort),
          data: pair,
          socket: {
            open(server) {
              pair.server.socket = server
              if (pair.dead) server.end()
              else flush(pair.server)
            },
            data: (_, data) => pass(pair, pair.client, data),
            drain: () => flush(pair.server),
            // A half-open connection hides the other side's close too.
            close: () => void (!paused && kill(pair)),
            error: () => void (!paused && kill(pair)),
          },
        }).catch(() => kill(pair))
      },
      data: (client, data) => pass(client.data, client.data.server, data),
      drain: (client) => flush(client.data.client),
      close: (client) => void (!paused && kill(client.data)),
      error: (client) => void (!paused && kill(client.data)),
    },
  })

  return {
    url: `http://127.0.0.1:${port}`,
    get open() {
      return pairs.size
    },
    get accepted() {
      return accepted
    },
    cut: () => {
      cutting = true
      for (const p of [...pairs]) kill(p)
      cutting = false
    },
    pause: () => void (paused = true),
    resume: () => {
      paused = false
      for (const p of pairs) release(p, p.client), release(p, p.server)
    },
    delay: (ms) => void (delayMs = ms),
    stop: () => {
      for (const p of [...pairs]) kill(p)
      listener.stop(true)
    },
  }
}
