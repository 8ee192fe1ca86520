/**
 * Baseline: bare Bun.serve WebSocket pub/sub, no framework. Clients send
 * {"op":"subscribe","channel"} and get {"op":"subscribed"}; a publisher connection sends
 * "<channel>\n<frame>" and the server publishes <frame> to the channel's topic. Prints
 * {"ready":true,"port"} and exits on SIGTERM.
 */
import { childConfig, reply } from '../lib/child'
import { serveTopics } from './topics'

const cfg = childConfig<{ port: number }>()
const server = serveTopics(cfg.port, (srv, text) => {
  // "<channel>\n<frame>" from the publisher connection
  const nl = text.indexOf('\n')
  if (nl > 0) srv.publish(text.slice(0, nl), text.slice(nl + 1))
})
reply({ ready: true, port: server.port })
process.on('SIGTERM', () => {
  server.stop(true)
  process.exit(0)
})
