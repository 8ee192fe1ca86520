/**
 * `bun bench/liveness-probe.ts [sockets] [port]`: what one liveness sweep (api/src/realtime/liveness.ts)
 * costs over `sockets` idle WebSockets (default 19,000, as bench/connections.ts), each held as the
 * node holds them (a Map of one object per socket, `heard` on it). The clients run in two processes
 * of their own (bench/lib/client-pool.ts) and answer pings by themselves. The sweeps are called by
 * hand: a sweep with nothing due (every socket heard within half the timeout) and one that pings
 * every socket (all quiet: the worst case, idle sockets are pinged about every third sweep), then
 * the time until every pong is back.
 */
import type { ServerWebSocket } from 'bun'
import { createLiveness } from '../api/src/realtime/liveness'
import { startClientPool } from './lib/client-pool'

const n = Number(process.argv[2] ?? 19_000)
const port = Number(process.argv[3] ?? 4911)
const rounds = 5

type Held = { id: number; heard: number; socket: ServerWebSocket<Held> }
const sockets = new Map<number, Held>()
let lastId = 0
let pongs = 0
const liveness = createLiveness<Held>({
  timeoutMs: 30_000,
  sockets: () => sockets,
  ping: (s) => void s.socket.ping(),
  close: (s) => s.socket.close(4012, 'no pong'),
})
const server = Bun.serve<Held>({
  port,
  hostname: '127.0.0.1',
  fetch: (req, srv) => (srv.upgrade(req, { data: { id: ++lastId, heard: liveness.sweeps } as Held }) ? undefined : new Response('upgrade', { status: 400 })),
  websocket: {
    idleTimeout: 0,
    open: (ws) => {
      ws.data.socket = ws
      sockets.set(ws.data.id, ws.data)
    },
    message: (ws) => void (ws.data.heard = liveness.sweeps),
    pong: (ws) => {
      ws.data.heard = liveness.sweeps
      pongs++
    },
    close: (ws) => void sockets.delete(ws.data.id),
  },
})
const clients = startClientPool({ kind: 'bun', url: `ws://127.0.0.1:${port}/`, n, channels: [], wave: 500 }, 2)
try {
  const ready = await clients.ready(300_000)
  await Bun.sleep(300)
  console.log(`${sockets.size} sockets open (${ready.count} clients) in ${ready.openMs.toFixed(0)} ms`)
  // The longest the event loop was held during a sweep: the largest gap between two turns of a 1 ms timer.
  const timed = async () => {
    let longest = 0
    let last = performance.now()
    const lag = setInterval(() => {
      const t = performance.now()
      longest = Math.max(longest, t - last)
      last = t
    }, 1)
    const t0 = performance.now()
    const r = await liveness.sweep()
    const ms = performance.now() - t0
    await Bun.sleep(2)
    clearInterval(lag)
    return { ms, longest: Math.max(longest, performance.now() - last), ...r }
  }
  for (let round = 1; round <= rounds; round++) {
    // Heard at the last sweep: the next two have nothing due, the third pings every socket.
    for (const s of sockets.values()) s.heard = liveness.sweeps
    const quiet = [await timed(), await timed()]
    pongs = 0
    const ping = await timed()
    const t0 = performance.now()
    while (pongs < ping.pinged && performance.now() - t0 < 30_000) await Bun.sleep(5)
    const back = performance.now() - t0
    console.log(
      `round ${round}: sweep with nothing due ${quiet.map((q) => `${q.ms.toFixed(2)} ms`).join(', ')}; ` +
        `sweep pinging ${ping.pinged}: done in ${ping.ms.toFixed(1)} ms, loop held at most ${ping.longest.toFixed(1)} ms; ` +
        `${pongs} pongs back in ${back.toFixed(0)} ms; closed ${quiet[0].closed + quiet[1].closed + ping.closed}`,
    )
  }
} finally {
  await clients.stop()
  server.stop(true)
}
