/**
 * Load-client process: opens `n` WebSocket (or Socket.IO) connections to one server, subscribes
 * client i to channels[i % channels.length], and records the latency of every update it receives
 * (receive time minus the timestamp the publisher put in `data.score`). Runs in its own process so
 * the server under test does not share a runtime with its clients.
 *
 * Prints {"ready":...} once every connection is open (and subscribed), then answers JSON-line
 * commands on stdin: {"cmd":"reset"}, {"cmd":"report"}, {"cmd":"close"}.
 */
import { io, type Socket } from 'socket.io-client'
import { childConfig, reply, serveCommands } from '../lib/child'
import { nowMs, summarize } from '../lib/stats'
import { mintUserToken } from '../../api/src/auth/mint'

export type ClientsConfig = {
  kind: 'fanfare' | 'bun' | 'socketio'
  url: string
  n: number
  /** Empty: idle connections that subscribe to nothing. */
  channels: string[]
  /** Connections opened at once. */
  wave?: number
  /**
   * Signs in every Fanfare connection with a user token of its own (`?token=`, sub `bench-<i>`),
   * minted with this secret before any connection opens (not timed).
   */
  jwtSecret?: string
  /** The first user number (`bench-<n>`), so several client processes sign in as different users. */
  firstUser?: number
  /** This process's first client number over all client processes (channel of client i: channels[(offset + i) % length]). */
  offset?: number
}

const cfg = childConfig<ClientsConfig>()
let latencies: number[] = []
let first = 0
let last = 0

function onUpdate(text: string) {
  const t = nowMs()
  const f = JSON.parse(text)
  if (f.op !== 'update') return
  if (latencies.length === 0) first = t
  last = t
  latencies.push(t - f.data.score)
}

type Conn = { close: () => void }

const tokens: string[] = []
if (cfg.jwtSecret) for (let i = 0; i < cfg.n; i++) tokens.push(await mintUserToken(cfg.jwtSecret, { sub: `bench-${(cfg.firstUser ?? 0) + i}`, ttlSeconds: 3600 }))

function openWs(i: number): Promise<Conn> {
  return new Promise((ok, fail) => {
    const ws = new WebSocket(tokens.length ? `${cfg.url}?token=${tokens[i]}` : cfg.url)
    const channel = cfg.channels.length ? cfg.channels[((cfg.offset ?? 0) + i) % cfg.channels.length] : undefined
    const timer = setTimeout(() => fail(new Error(`connection ${i} not ready in 60 s`)), 60_000)
    const done = () => (clearTimeout(timer), ok({ close: () => ws.close() }))
    ws.onerror = () => (clearTimeout(timer), fail(new Error(`connection ${i} failed`)))
    ws.onopen = () => {
      if (!channel) return done()
      ws.send(JSON.stringify({ op: 'subscribe', ref: 's', channel }))
    }
    ws.onmessage = (e) => {
      const text = String(e.data)
      // The first frame answers the subscribe: a snapshot (Fanfare) or "subscribed" (bare Bun).
      if (text.startsWith('{"op":"snapshot"') || text.startsWith('{"op":"subscribed"')) return done()
      if (text.startsWith('{"op":"error"')) return fail(new Error(text))
      onUpdate(text)
    }
  })
}

function openSocketIo(i: number): Promise<Conn> {
  return new Promise((ok, fail) => {
    const s: Socket = io(cfg.url, { transports: ['websocket'], forceNew: true, reconnection: false })
    const channel = cfg.channels.length ? cfg.channels[((cfg.offset ?? 0) + i) % cfg.channels.length] : undefined
    const timer = setTimeout(() => fail(new Error(`socket.io connection ${i} not ready in 60 s`)), 60_000)
    const done = () => (clearTimeout(timer), ok({ close: () => s.close() }))
    s.on('connect_error', (err) => (clearTimeout(timer), fail(err)))
    s.on('update', (text: string) => onUpdate(text))
    s.on('connect', () => {
      if (!channel) return done()
      s.emit('subscribe', channel, () => done())
    })
  })
}

const conns: Conn[] = []
const started = nowMs()
const wave = cfg.wave ?? 250
try {
  for (let i = 0; i < cfg.n; i += wave) {
    const batch = []
    for (let j = i; j < Math.min(cfg.n, i + wave); j++) batch.push(cfg.kind === 'socketio' ? openSocketIo(j) : openWs(j))
    conns.push(...(await Promise.all(batch)))
  }
  reply({ ready: true, count: conns.length, openMs: nowMs() - started })
} catch (err) {
  reply({ error: String(err) })
  process.exit(1)
}

await serveCommands((c) => {
  switch (c.cmd) {
    case 'reset':
      latencies = []
      first = last = 0
      return { ok: true }
    case 'report':
      return { ...summarize(latencies), first, last, ...(c.latencies ? { latencies } : {}) }
    case 'close':
      for (const conn of conns) conn.close()
      setTimeout(() => process.exit(0), 50)
      return { ok: true }
    default:
      throw new Error(`unknown command ${JSON.stringify(c)}`)
  }
})
