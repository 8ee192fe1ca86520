// Baseline: Socket.IO rooms on Node.js. Clients emit ("subscribe", channel, ack) to join a room;
// a publisher socket emits ("pub", channel, frame) and the server sends ("update", frame) to the
// room. Prints {"ready":true,"port"}; exits on SIGTERM. Plain JS so that `node` runs it as is.
import { createServer } from 'node:http'
import { Server } from 'socket.io'

const cfg = JSON.parse(process.env.FANFARE_BENCH_CONFIG ?? '{}')
const http = createServer()
const io = new Server(http, { transports: ['websocket'], serveClient: false })
io.on('connection', (socket) => {
  socket.on('subscribe', (channel, ack) => {
    socket.join(channel)
    if (typeof ack === 'function') ack(true)
  })
  socket.on('pub', (channel, frame) => io.to(channel).emit('update', frame))
})
http.listen(cfg.port, '127.0.0.1', () => process.stdout.write(`${JSON.stringify({ ready: true, port: http.address().port })}\n`))
process.on('SIGTERM', () => {
  io.close()
  process.exit(0)
})
