import type { Socket, TCPSocketListener } from 'bun'

/**
 * A TCP proxy a test puts between two servers (a leaf nats-server and its hub) to cut the link
 * between them and restore it, with both servers running.
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
  close: () => void
}

type Side = { peer?: Socket<Side>; pending: Uint8Array[] }

export function tcpProxy(opts: { port: number; target: { host: string; port: number } }): TcpProxy {
  let open = true
  let stalled = false
  const sockets = new Set<Socket<Side>>()
  /** What a stall held, per destination, in order. */
  const held = new Map<Socket<Side>, Uint8Array[]>()
  const relay = (from: Socket<Side>, data: Uint8Array) => {
    const peer = from.data.peer
    // Until the upstream connection is up, keep what the client sent (copied: Bun reuses the buffer).
    if (!peer) from.data.pending.push(data.slice())
    else if (stalled) {
      const queue = held.get(peer) ?? []
      queue.push(data.slice())
      held.set(peer, queue)
    }
    else peer.write(data)
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
              upstream.data = { peer: client, pending: [] }
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
      stalled = true
    },
    restore: () => {
      open = true
      stalled = false
      for (const [to, chunks] of held) if (sockets.has(to)) for (const c of chunks) to.write(c)
      held.clear()
    },
    close: () => {
      open = false
      for (const s of sockets) s.end()
      server.stop(true)
    },
  }
}
