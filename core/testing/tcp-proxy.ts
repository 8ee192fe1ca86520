import type { Socket, TCPSocketListener } from 'bun'
import { freePort } from '../process'

/**
 * A TCP proxy a test puts between two servers (a leaf nats-server and its hub), or between a
 * client and its server, to break the path on purpose with both ends running: cut it (every
 * connection closed), stall it (a half-open connection: a dead NAT entry, a laptop lid), hold the
 * server's answers back (a slow network) or delay every chunk.
 *
 * Bytes are never reordered nor dropped, except by `cut` (and `close`): what is held or delayed
 * goes on in the order it came. A close travels like the bytes before it: what a side sent before
 * closing reaches the other side (a WebSocket close frame among it), and only then is the other
 * side closed; so a stall hides a close until `restore`, and a delay delays it too.
 */
export type TcpProxy = {
  /** The port clients connect to. */
  port: number
  /** Connections open now (each a client's connection and its own to the target). */
  readonly open: number
  /** Client connections accepted so far (not those refused while cut). */
  readonly accepted: number
  /**
   * Closes every proxied connection, throwing away what was held for it; new ones are refused
   * (closed at once) until `restore`. For a reset the client may reconnect through at once:
   * `cut(); restore()`.
   */
  cut: () => void
  /**
   * Holds what either side sends, and its closes, on the connections open now and those to come,
   * connections left open (a network path that silently stops carrying packets): nothing arrives
   * and nothing fails until an endpoint gives up on its own (NATS: missed pings; a WebSocket
   * client: an unanswered ping) or `restore` delivers what was held, in order.
   */
  stall: () => void
  /** Ends a cut (connections accepted again), a stall and a hold: what was held goes on, in order. */
  restore: () => void
  /** Keeps what the target sends on open connections until `release` (what clients send still goes through). */
  hold: () => void
  /**
   * Holds like `hold` from the chunk after the one in which the target has sent `marker` for the
   * `count`th time (counted within chunks): to stop a stream of messages part-way, at a known
   * place. Resolves when it starts holding.
   */
  holdAfter: (marker: string, count: number) => Promise<void>
  /** Lets the held data through, in the order it came, and stops holding (a stall too). */
  release: () => void
  /** Holds each chunk, either way, `ms` after it came before passing it on (0: none); never overtaking the one before. */
  delay: (ms: number) => void
  close: () => void
}

const END = Symbol('end')
/** A chunk (or the close after the last one) on its way, due at `at`; `through` passes a hold (the one `holdAfter` stops after). */
type Item = { at: number; data: Uint8Array | typeof END; through?: boolean }
/** One way of a link: what is on its way to `to`, in order. */
type Direction = {
  to?: Socket<Link>
  fromTarget: boolean
  /** Held or delayed, not yet passed on. */
  queue: Item[]
  /** Passed on, not yet taken by the socket (it pushes back). */
  out: Uint8Array[]
  /** The close came after `out`: end `to` once it is written. */
  ending: boolean
  /** `to` is closed (or cut): nothing more goes its way. */
  dead: boolean
  timer?: ReturnType<typeof setTimeout>
}
/** A client's connection and the proxy's own to the target. */
type Link = { toTarget: Direction; toClient: Direction; clientClosed: boolean; targetClosed: boolean }

export function tcpProxy(opts: { port: number; target: { host: string; port: number } }): TcpProxy {
  let accepting = true
  let accepted = 0
  let delayMs = 0
  /** What is held (a stall: both directions; a hold: what the target sends). */
  let holding: 'nothing' | 'from target' | 'both' = 'nothing'
  let armed: { marker: string; left: number; started: () => void } | undefined
  const links = new Set<Link>()
  const isHeld = (d: Direction) => holding === 'both' || (holding === 'from target' && d.fromTarget)

  const flush = (d: Direction) => {
    const s = d.to
    if (!s || d.dead) return
    while (d.out.length > 0) {
      const chunk = d.out[0]
      const n = s.write(chunk)
      if (n < chunk.length) {
        // The rest goes when the socket drains.
        if (n > 0) d.out[0] = chunk.subarray(n)
        return
      }
      d.out.shift()
    }
    if (d.ending) {
      d.dead = true
      s.end()
    }
  }
  /** Passes on what is due and not held, in order; what comes later waits for what came before. */
  const pump = (d: Direction) => {
    if (d.dead) return
    if (d.timer) clearTimeout(d.timer)
    d.timer = undefined
    while (d.queue.length > 0 && !d.ending && (!isHeld(d) || d.queue[0].through) && d.queue[0].at <= Date.now()) {
      const { data } = d.queue.shift()!
      if (data === END) d.ending = true
      else d.out.push(data)
    }
    flush(d)
    if (d.queue.length > 0 && !d.ending && (!isHeld(d) || d.queue[0].through)) d.timer = setTimeout(() => pump(d), Math.max(1, d.queue[0].at - Date.now()))
  }
  const send = (d: Direction, data: Uint8Array | typeof END, through = false) => {
    if (d.dead) return
    // Copied: Bun reuses the buffer it read into.
    d.queue.push({ at: Date.now() + delayMs, data: data === END ? END : data.slice(), through })
    pump(d)
  }
  const drop = (d: Direction) => {
    d.dead = true
    d.queue = []
    d.out = []
    if (d.timer) clearTimeout(d.timer)
    d.timer = undefined
  }
  const fromTarget = (link: Link, data: Uint8Array) => {
    if (armed && holding === 'nothing') {
      armed.left -= Buffer.from(data).toString('latin1').split(armed.marker).length - 1
      if (armed.left <= 0) {
        const { started } = armed
        armed = undefined
        send(link.toClient, data, true)
        holding = 'from target'
        started()
        return
      }
    }
    send(link.toClient, data)
  }
  /** One side closed: nothing more goes its way; its close follows what it sent to the other. */
  const closed = (link: Link, side: 'client' | 'target') => {
    if (side === 'client') {
      if (link.clientClosed) return
      link.clientClosed = true
    } else {
      if (link.targetClosed) return
      link.targetClosed = true
    }
    const [mine, theirs] = side === 'client' ? [link.toClient, link.toTarget] : [link.toTarget, link.toClient]
    drop(mine)
    send(theirs, END)
    if (link.clientClosed && link.targetClosed) links.delete(link)
  }
  const cutAll = () => {
    for (const link of links) {
      for (const d of [link.toTarget, link.toClient]) {
        const s = d.to
        drop(d)
        s?.end()
      }
    }
    links.clear()
  }

  const server: TCPSocketListener<Link> = Bun.listen<Link>({
    hostname: '127.0.0.1',
    port: opts.port,
    socket: {
      open(client) {
        if (!accepting) return void client.end()
        accepted++
        const direction = (to: Socket<Link> | undefined, fromTarget: boolean): Direction => ({ to, fromTarget, queue: [], out: [], ending: false, dead: false })
        const link: Link = { toTarget: direction(undefined, false), toClient: direction(client, true), clientClosed: false, targetClosed: false }
        client.data = link
        links.add(link)
        void Bun.connect<Link>({
          hostname: opts.target.host,
          port: opts.target.port,
          data: link,
          socket: {
            open(upstream) {
              // Cut (or its client gone and its close passed on) while connecting.
              if (link.toTarget.dead) return void upstream.end()
              link.toTarget.to = upstream
              flush(link.toTarget)
            },
            data: (_, data) => fromTarget(link, data),
            drain: () => flush(link.toTarget),
            close: () => closed(link, 'target'),
            error: () => closed(link, 'target'),
          },
        }).catch(() => closed(link, 'target'))
      },
      // A refused client has no link.
      data: (client, data) => void (client.data && send(client.data.toTarget, data)),
      drain: (client) => void (client.data && flush(client.data.toClient)),
      close: (client) => void (client.data && closed(client.data, 'client')),
      error: (client) => void (client.data && closed(client.data, 'client')),
    },
  })
  const pumpAll = () => {
    for (const link of links) pump(link.toTarget), pump(link.toClient)
  }
  return {
    port: opts.port,
    get open() {
      return links.size
    },
    get accepted() {
      return accepted
    },
    cut: () => {
      accepting = false
      cutAll()
    },
    stall: () => {
      holding = 'both'
    },
    restore: () => {
      accepting = true
      holding = 'nothing'
      pumpAll()
    },
    hold: () => {
      if (holding === 'nothing') holding = 'from target'
    },
    holdAfter: (marker, count) =>
      new Promise<void>((started) => {
        armed = { marker, left: count, started }
      }),
    release: () => {
      holding = 'nothing'
      pumpAll()
    },
    delay: (ms) => {
      delayMs = ms
    },
    close: () => {
      accepting = false
      cutAll()
      server.stop(true)
    },
  }
}

/**
 * A proxy on a free port in front of the Postgres of `databaseUrl`, and the same URL through it:
 * for a node or a connection whose path to Postgres a test stalls or cuts.
 */
export function proxyDatabase(databaseUrl: string): { proxy: TcpProxy; url: string } {
  const direct = new URL(databaseUrl)
  const proxy = tcpProxy({ port: freePort(), target: { host: direct.hostname, port: Number(direct.port || 5432) } })
  const proxied = new URL(direct)
  proxied.port = String(proxy.port)
  return { proxy, url: proxied.toString() }
}
