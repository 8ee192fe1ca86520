/**
 * Baseline: bare Bun.serve WebSocket pub/sub, no framework. Clients send
 * {"op":"subscribe","channel"} and get {"op":"subscribed"}; a publisher connection sends
 * "<channel>\n<frame>" and the server publishes <frame> to the channel's topic. Prints
 * {"ready":true,"port"} and exits on SIGTERM.
 */
import { childConfig, reply } from '../lib/child'

const cfg = childConfig<{ port: number }>()
const server = Bun.serve({
  hostname: '127.0.0.1',
  port: cfg.port,
  fetch(req, srv) {
    if (srv.upgrade(req)) return
    return new Response('websocket only', { status: 400 })
  },
  websocket: {
    idleTimeout: 120,
    message(ws, message) {
      const text = String(message)
      const nl = text.indexOf('\n')
      if (nl > 0 && !text.startsWith('{')) return void server.publish(text.slice(0, nl), text.slice(nl + 1))
      const f = JSON.parse(text)
      if (f.op === 'subscribe') {
        ws.subscribe(f.channel)
        ws.send('{"op":"subscribed"}')
      }
    },
  },
})
reply({ ready: true, port: server.port })
process.on('SIGTERM', () => {
  server.stop(true)
  process.exit(0)
})
