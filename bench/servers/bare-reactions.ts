/**
 * Baseline for the reactions benchmark: a bare Bun.serve WebSocket server that counts reactions in
 * memory, with Fanfare's frames and window but none of its durability (no JetStream, no Postgres,
 * no validation beyond parsing, nothing survives a restart). `publish` frames are counted per
 * (stream, emoji) and acknowledged at once with a sequence; `subscribe` to `reactions:<stream>`
 * answers a snapshot of the totals; each stream's counts go out as one `update` per window
 * (`{ counts, totals }`, `from`..`version`), timed like Fanfare's hub (the window opens with the
 * first reaction after a flush). Prints {"ready":true,"port"} and exits on SIGTERM.
 */
import type { Server } from 'bun'
import { childConfig, reply } from '../lib/child'

const cfg = childConfig<{ port: number; windowMs: number }>()

type StreamState = { totals: Map<string, number>; counts: Map<string, number> | undefined; version: number; from: number }
const streams = new Map<string, StreamState>()
let seq = 0

const stateOf = (stream: string) => {
  let s = streams.get(stream)
  if (!s) streams.set(stream, (s = { totals: new Map(), counts: undefined, version: 0, from: 0 }))
  return s
}

function flush(server: Server<undefined>, stream: string, s: StreamState) {
  const counts = s.counts!
  s.counts = undefined
  const totals: Record<string, number> = {}
  for (const emoji of counts.keys()) totals[emoji] = s.totals.get(emoji)!
  const channel = `reactions:${stream}`
  server.publish(
    channel,
    JSON.stringify({ op: 'update', channel, ...(s.from !== s.version ? { from: s.from } : {}), version: s.version, epoch: 'bare', data: { counts: Object.fromEntries(counts), totals } }),
  )
}

const server: Server<undefined> = Bun.serve({
  hostname: '127.0.0.1',
  port: cfg.port,
  fetch(req, srv) {
    if (srv.upgrade(req)) return
    return new Response('websocket only', { status: 400 })
  },
  websocket: {
    idleTimeout: 120,
    message(ws, message) {
      const f = JSON.parse(String(message))
      if (f.op === 'publish') {
        const { stream, emoji } = f.event.data
        const s = stateOf(stream)
        s.totals.set(emoji, (s.totals.get(emoji) ?? 0) + 1)
        // Every reaction is its own version, as if each were a change.
        s.version++
        if (!s.counts) {
          s.counts = new Map()
          s.from = s.version
          setTimeout(() => flush(server, stream, s), cfg.windowMs)
        }
        s.counts.set(emoji, (s.counts.get(emoji) ?? 0) + 1)
        ws.send(`{"op":"ack","ref":${JSON.stringify(f.ref)},"id":${JSON.stringify(f.event.id)},"seq":${++seq},"duplicate":false}`)
      } else if (f.op === 'subscribe') {
        const stream = String(f.channel).slice('reactions:'.length)
        const s = stateOf(stream)
        ws.subscribe(f.channel)
        ws.send(JSON.stringify({ op: 'snapshot', channel: f.channel, version: s.version, epoch: 'bare', data: { stream, totals: Object.fromEntries(s.totals) } }))
      }
    },
  },
})
reply({ ready: true, port: server.port })
process.on('SIGTERM', () => {
  server.stop(true)
  process.exit(0)
})
