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
  restore: () => void
  /** Keeps what the target sends on open connections until `release` (what clients send still goes through). */
  hold: () => void
  /** Lets the held data through, in the order it came, and stops holding. */
  release: () => void
  close: () => void
}

type Side = { peer?: Socket<Side>; pending: Uint8Array[]; upstream?: boolean }

export function tcpProxy(opts: { port: number; target: { host: string; port: number } }): TcpProxy {
  let open = true
  const sockets = new Set<Socket<Side>>()
  let held: [Socket<Side>, Uint8Array][] | undefined
  const relay = (from: Socket<Side>, data: Uint8Array) => {
    if (held && from.data.upstream) return void held.push([from, data.slice()])
    const peer = from.data.peer
    // Until the upstream connection is up, keep what the client sent (copied: Bun reuses the buffer).
    if (!peer) from.data.pending.push(data.slice())
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
    restore: () => {
      open = true
    },
    hold: () => {
      held ??= []
    },
    release: () => {
      const chunks = held ?? []
      held = undefined
      for (const [from, chunk] of chunks) from.data.peer?.write(chunk)
    },
    close: () => {
      open = false
      for (const s of sockets) s.end()
      server.stop(true)
    },
  }
}
