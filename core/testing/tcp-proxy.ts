import type { Socket, TCPSocketListener } from 'bun'

/**
 * A TCP proxy a test puts between two servers (a leaf nats-server and its hub), or between a
 * client and its server, to cut the link and restore it with both running, or to hold the
 * server's answers back for a while (a slow network) and then let them through in order.
 */
export type TcpProxy = {
  /** The port clients connect to. */
  port: number
  /** Closes every proxied connection; new ones are refused (closed at once) until `restore`. */
  cut: () => void
  /**
   * Holds what either side sends, connections left open (a network path that silently stops
   * carrying packets): nothing arrives and nothing fails until an endpoint gives up on its own
   * (NATS: missed pings) or `restore` delivers what was held, in order.
   */
  stall: () => void
  restore: () => void
  /** Keeps what the target sends on open connections until `release` (what clients send still goes through). */
  hold: () => void
  /**
   * Holds like `hold` from the chunk after the one in which the target has sent `marker` for the
   * `count`th time (counted within chunks): to stop a stream of messages part-way, at a known
   * place. Resolves when it starts holding.
   */
  holdAfter: (marker: string, count: number) => Promise<void>
  /** Lets the held data through, in the order it came, and stops holding. */
  release: () => void
  close: () => void
}

type Side = { peer?: Socket<Side>; pending: Uint8Array[]; upstream?: boolean }

export function tcpProxy(opts: { port: number; target: { host: string; port: number } }): TcpProxy {
  let open = true
  const sockets = new Set<Socket<Side>>()
  /** What is held (a stall: both directions; a hold: what the target sends), per destination, in order. */
  let holding: 'nothing' | 'from target' | 'both' = 'nothing'
  const held = new Map<Socket<Side>, Uint8Array[]>()
  let armed: { marker: string; left: number; started: () => void } | undefined
  const relay = (from: Socket<Side>, data: Uint8Array) => {
    const peer = from.data.peer
    if (armed && from.data.upstream && holding === 'nothing') {
      armed.left -= Buffer.from(data).toString('latin1').split(armed.marker).length - 1
      if (armed.left <= 0) {
        const { started } = armed
        armed = undefined
        peer?.write(data)
        holding = 'from target'
        started()
        return
      }
    }
    // Until the upstream connection is up, keep what the client sent (copied: Bun reuses the buffer).
    if (!peer) from.data.pending.push(data.slice())
    else if (holding === 'both' || (holding === 'from target' && from.data.upstream)) {
      const queue = held.get(peer) ?? []
      queue.push(data.slice())
      held.set(peer, queue)
    } else peer.write(data)
  }
  /** Delivers what was held, in order, to the connections still open, and holds nothing more. */
  const deliverHeld = () => {
    holding = 'nothing'
    for (const [to, chunks] of held) if (sockets.has(to)) for (const c of chunks) to.write(c)
    held.clear()
  }
  const server: TCPSocketListener<Side> = Bun.listen<Side>({
    hostname: '127.0.0.1',
    port: opts.port,
    socket: {
      open(client) {
        client.data = { pending: [] }
        if (!open) return void client.end()
        sockets.add(client)
        void Bun.connect<Side>({
          hostname: opts.target.host,
          port: opts.target.port,
          socket: {
            open(upstream) {
              upstream.data = { peer: client, pending: [], upstream: true }
              sockets.add(upstream)
              if (!open) return void upstream.end()
              client.data.peer = upstream
              for (const chunk of client.data.pending) upstream.write(chunk)
              client.data.pending = []
            },
            data: relay,
            close(upstream) {
              sockets.delete(upstream)
              upstream.data.peer?.end()
            },
            error(upstream) {
              upstream.data.peer?.end()
            },
          },
        }).catch(() => client.end())
      },
      data: relay,
      close(client) {
        sockets.delete(client)
        client.data.peer?.end()
      },
      error(client) {
        client.data.peer?.end()
      },
    },
  })
  return {
    port: opts.port,
    cut: () => {
      open = false
      for (const s of sockets) s.end()
      sockets.clear()
    },
    stall: () => {
      holding = 'both'
    },
    restore: () => {
      open = true
      deliverHeld()
    },
    hold: () => {
      if (holding === 'nothing') holding = 'from target'
    },
    holdAfter: (marker, count) =>
      new Promise<void>((started) => {
        armed = { marker, left: count, started }
      }),
    release: deliverHeld,
    close: () => {
      open = false
      for (const s of sockets) s.end()
      server.stop(true)
    },
  }
}
