/**
 * Load-client process for the reactions benchmark: `users` WebSocket connections, each a viewer of
 * one stream (`streams[i % streams.length]`) that subscribes to `reactions:<stream>` and sends
 * `reaction.sent` events on it, one per frame. Works with Fanfare (user JWTs minted from
 * `jwtSecret`, not timed) and the bare baseline server (same frames, no token).
 *
 * It records the ack of every reaction (its stream sequence and time) and every reactions frame
 * each connection receives, so that it can tell, for each acknowledged reaction, when the first
 * frame whose totals include it reached its sender: a stream's reactions apply in stream-sequence
 * order, so the reaction of rank k (by sequence) among its (stream, emoji) is in a frame once that
 * frame's total for the emoji is at least k.
 *
 * Prints {"ready":...} once every connection is subscribed, then answers JSON-line commands:
 * {"cmd":"paced","rate","seconds"}, {"cmd":"max","inFlight","seconds"}, {"cmd":"lag","from","to"},
 * {"cmd":"acks","from","to"}, {"cmd":"frames","from","to","windowMs"}, {"cmd":"close"}.
 */
import { mintUserToken } from '../../api/src/auth/mint'
import { childConfig, reply, serveCommands } from '../lib/child'
import { nowMs, summarize } from '../lib/stats'

export type SendersConfig = {
  url: string
  users: number
  streams: string[]
  emojis: string[]
  /** Signs every connection in with a user token of its own (sub `bench-<i>`). */
  jwtSecret?: string
  /** Connections opened at once. */
  wave?: number
}

const cfg = childConfig<SendersConfig>()
const S = cfg.streams.length
const E = cfg.emojis.length

/** Acknowledged reactions, one entry each: which connection, stream and emoji, sequence, ack time. */
const ack = { conn: [] as number[], stream: [] as number[], emoji: [] as number[], seq: [] as number[], at: [] as number[] }
/** Per connection: the reactions frames it received (receive time, first and last version, totals). */
type Frame = { at: number; from: number; version: number; totals: Record<string, number> }
const frames: Frame[][] = []
const errors: Record<string, number> = {}

type Conn = { ws: WebSocket; stream: number; sent: number; inFlight: number; onAck?: () => void }
const conns: Conn[] = []
/** Reactions sent and not yet answered, by ref: [connection, emoji index]. */
const waiting = new Map<string, [number, number]>()
let answered = 0
let sentTotal = 0
let refs = 0

function open(i: number, token: string | undefined): Promise<Conn> {
  return new Promise((ok, fail) => {
    const ws = new WebSocket(token ? `${cfg.url}?token=${token}` : cfg.url)
    const conn: Conn = { ws, stream: i % S, sent: 0, inFlight: 0 }
    const channel = `reactions:${cfg.streams[conn.stream]}`
    frames[i] = []
    const timer = setTimeout(() => fail(new Error(`connection ${i} not subscribed in 60 s`)), 60_000)
    ws.onerror = () => (clearTimeout(timer), fail(new Error(`connection ${i} failed`)))
    ws.onopen = () => ws.send(JSON.stringify({ op: 'subscribe', ref: 's', channel }))
    ws.onmessage = (e) => {
      const t = nowMs()
      const f = JSON.parse(String(e.data))
      switch (f.op) {
        case 'ack': {
          const w = waiting.get(f.ref)
          if (!w) return
          waiting.delete(f.ref)
          answered++
          ack.conn.push(w[0])
          ack.stream.push(conns[w[0]].stream)
          ack.emoji.push(w[1])
          ack.seq.push(f.seq)
          ack.at.push(t)
          conn.inFlight--
          conn.onAck?.()
          return
        }
        case 'update':
          frames[i].push({ at: t, from: f.from ?? f.version, version: f.version, totals: f.data.totals })
          return
        case 'snapshot':
        case 'subscribed':
          if (f.resync) errors.resync = (errors.resync ?? 0) + 1
          clearTimeout(timer)
          return ok(conn)
        case 'error': {
          const code = f.error?.code ?? 'error'
          errors[code] = (errors[code] ?? 0) + 1
          if (f.ref !== undefined && waiting.delete(f.ref)) {
            answered++
            conn.inFlight--
            conn.onAck?.()
          } else if (f.ref === 's') {
            clearTimeout(timer)
            fail(new Error(`subscribe refused: ${JSON.stringify(f)}`))
          }
          return
        }
      }
    }
    ws.onclose = (e) => {
      if (!closing) errors[`close_${e.code}`] = (errors[`close_${e.code}`] ?? 0) + 1
    }
  })
}
let closing = false

/** Sends one reaction on connection `i`, its emoji chosen round-robin per connection. */
function send(i: number) {
  const c = conns[i]
  const emoji = (i + c.sent++) % E
  const ref = `${refs++}`
  waiting.set(ref, [i, emoji])
  c.inFlight++
  sentTotal++
  c.ws.send(`{"op":"publish","ref":"${ref}","event":{"id":"b${ref}","type":"reaction.sent","data":{"stream":"${cfg.streams[c.stream]}","emoji":"${cfg.emojis[emoji]}"}}}`)
}

/** Waits until every reaction sent was answered, or `timeoutMs`. */
async function drain(timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs
  while (waiting.size > 0 && Date.now() < deadline) await Bun.sleep(10)
}

/** A phase's figures from the acks that arrived since `firstAck` (index into `ack`). */
function phaseResult(firstAck: number, started: number, sent: number) {
  const n = ack.at.length - firstAck
  const lastAck = n > 0 ? ack.at[ack.at.length - 1] : started
  return { sent, acked: n, unanswered: waiting.size, started, lastAck, ackRate: n / ((lastAck - started) / 1000), errors: { ...errors } }
}

const tokens: (string | undefined)[] = []
for (let i = 0; i < cfg.users; i++) tokens.push(cfg.jwtSecret ? await mintUserToken(cfg.jwtSecret, { sub: `bench-${i}`, ttlSeconds: 3600 }) : undefined)
const wave = cfg.wave ?? 250
const t0 = nowMs()
try {
  for (let i = 0; i < cfg.users; i += wave) {
    const batch = []
    for (let j = i; j < Math.min(cfg.users, i + wave); j++) batch.push(open(j, tokens[j]))
    conns.push(...(await Promise.all(batch)))
  }
  reply({ ready: true, count: conns.length, openMs: nowMs() - t0 })
} catch (err) {
  reply({ error: String(err) })
  process.exit(1)
}

await serveCommands(async (c) => {
  switch (c.cmd) {
    case 'paced': {
      // Every 10 ms, rate/100 reactions, taking the connections in turn: each user sends every
      // users/(rate/100) ticks, e.g. 2,000 users at 20,000/s send 10 a second each.
      for (const k of Object.keys(errors)) delete errors[k]
      const perTick = Math.max(1, Math.round(c.rate / 100))
      const ticks = Math.round(c.seconds * 100)
      const firstAck = ack.at.length
      const started = nowMs()
      const p0 = performance.now()
      let next = 0
      let sent = 0
      for (let k = 0; k < ticks; k++) {
        const d = p0 + k * 10 - performance.now()
        if (d > 0) await Bun.sleep(d)
        for (let j = 0; j < perTick; j++) {
          send(next)
          next = (next + 1) % conns.length
          sent++
        }
      }
      await drain()
      return phaseResult(firstAck, started, sent)
    }
    case 'max': {
      // Closed loop: each connection keeps `inFlight` reactions unanswered until `seconds` pass.
      for (const k of Object.keys(errors)) delete errors[k]
      const firstAck = ack.at.length
      const started = nowMs()
      const until = started + c.seconds * 1000
      const before = sentTotal
      // (time, acks so far) every 100 ms, for a steady-state rate.
      const timeline: [number, number][] = []
      const sampler = setInterval(() => timeline.push([nowMs(), ack.at.length - firstAck]), 100)
      conns.forEach((conn, i) => {
        conn.onAck = () => {
          if (nowMs() < until) while (conn.inFlight < c.inFlight) send(i)
        }
        while (conn.inFlight < c.inFlight) send(i)
      })
      await Bun.sleep(c.seconds * 1000)
      await drain()
      clearInterval(sampler)
      for (const conn of conns) conn.onAck = undefined
      return { ...phaseResult(firstAck, started, sentTotal - before), timeline }
    }
    case 'lag':
      return lag(c.from, c.to)
    case 'acks':
      return acksIn(c.from, c.to)
    case 'frames':
      return frameStats(c.from, c.to, c.windowMs)
    case 'close':
      closing = true
      for (const conn of conns) conn.ws.close()
      setTimeout(() => process.exit(0), 50)
      return { ok: true }
    default:
      throw new Error(`unknown command ${JSON.stringify(c)}`)
  }
})

/** Each acknowledged reaction's rank among its (stream, emoji) by stream sequence, 1-based. */
function ranks(): Int32Array {
  const n = ack.at.length
  const order = Array.from({ length: n }, (_, k) => k).sort((a, b) => ack.seq[a] - ack.seq[b])
  const rank = new Int32Array(n)
  const counts = new Int32Array(S * E)
  for (const k of order) rank[k] = ++counts[ack.stream[k] * E + ack.emoji[k]]
  return rank
}

/** The reactions acknowledged between `from` and `to`: stream and emoji (indexes), rank, ack time, stream sequence. */
function acksIn(from: number, to: number) {
  const rank = ranks()
  const out = { stream: [] as number[], emoji: [] as number[], rank: [] as number[], at: [] as number[], seq: [] as number[] }
  for (let k = 0; k < ack.at.length; k++) {
    if (ack.at[k] < from || ack.at[k] > to) continue
    out.stream.push(ack.stream[k])
    out.emoji.push(ack.emoji[k])
    out.rank.push(rank[k])
    out.at.push(ack.at[k])
    out.seq.push(ack.seq[k])
  }
  return out
}

/**
 * For every reaction acknowledged between `from` and `to`: the time from its ack to the first
 * frame, on its sender's connection, whose totals include it. Ranks count every acknowledged
 * reaction of the (stream, emoji), earlier phases included, in stream-sequence order.
 */
function lag(from: number, to: number) {
  const n = ack.at.length
  const rank = ranks()
  // Per connection and emoji: the frames carrying that emoji's total, in order.
  const byConnEmoji = new Map<number, { at: number[]; total: number[] }>()
  const series = (conn: number, emoji: number) => {
    const key = conn * E + emoji
    let s = byConnEmoji.get(key)
    if (!s) {
      s = { at: [], total: [] }
      const name = cfg.emojis[emoji]
      for (const f of frames[conn]) {
        const t = f.totals[name]
        if (t !== undefined) s.at.push(f.at), s.total.push(t)
      }
      byConnEmoji.set(key, s)
    }
    return s
  }
  const lags: number[] = []
  let missing = 0
  for (let k = 0; k < n; k++) {
    if (ack.at[k] < from || ack.at[k] > to) continue
    const s = series(ack.conn[k], ack.emoji[k])
    // First frame whose total reaches the rank (totals only grow).
    let lo = 0
    let hi = s.total.length
    while (lo < hi) {
      const mid = (lo + hi) >> 1
      if (s.total[mid] >= rank[k]) hi = mid
      else lo = mid + 1
    }
    if (lo === s.total.length) missing++
    else lags.push(s.at[lo] - ack.at[k])
  }
  return { ...summarize(lags), missing }
}

/**
 * Frames received between `from` and `to` over every connection: how many, the closest two
 * consecutive frames of one connection, the most frames one connection got within any interval of
 * `windowMs - 100` (delivery jitter of up to 100 ms allowed for), and gaps in versions.
 */
function frameStats(from: number, to: number, windowMs: number) {
  let total = 0
  let closest = Number.POSITIVE_INFINITY
  let mostInWindow = 0
  let gaps = 0
  let subscribers = 0
  for (const list of frames) {
    const fs = list.filter((f) => f.at >= from && f.at <= to)
    if (fs.length === 0) continue
    subscribers++
    total += fs.length
    let lo = 0
    for (let k = 0; k < fs.length; k++) {
      if (k > 0) {
        closest = Math.min(closest, fs[k].at - fs[k - 1].at)
        if (fs[k].from !== fs[k - 1].version + 1) gaps++
      }
      while (fs[k].at - fs[lo].at >= windowMs - 100) lo++
      mostInWindow = Math.max(mostInWindow, k - lo + 1)
    }
  }
  return { frames: total, subscribers, closest, mostInWindow, gaps, seconds: (to - from) / 1000 }
}
