import type { Server } from 'bun'

/**
 * The WebSocket side both bare baselines share: Bun.serve on 127.0.0.1 where a JSON frame
 * {"op":"subscribe","channel"} joins the channel's topic and is answered {"op":"subscribed"}. Any
 * other frame goes to `onOther` (the bare pub/sub server's publisher frames).
 */
export function serveTopics(port: number, onOther?: (server: Server<undefined>, text: string) => void): Server<undefined> {
  const server: Server<undefined> = Bun.serve({
    hostname: '127.0.0.1',
    port,
    fetch(req, srv) {
      if (srv.upgrade(req)) return
      return new Response('websocket only', { status: 400 })
    },
    websocket: {
      idleTimeout: 120,
      message(ws, message) {
        const text = String(message)
        if (onOther && !text.startsWith('{')) return onOther(server, text)
        const f = JSON.parse(text)
        if (f.op === 'subscribe') {
          ws.subscribe(f.channel)
          ws.send('{"op":"subscribed"}')
        }
      },
    },
  })
  return server
}
