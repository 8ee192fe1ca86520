import { afterEach, describe, expect, test } from 'bun:test'
import type { ServerWebSocket } from 'bun'
import { createClient, type Client, type Status } from './index'
import { until } from '../../core/testing/wait'

/**
 * The client's reactions to what a server does, against small scripted WebSocket servers that do
 * exactly the thing under test (close with a code, stay silent, skip a version). What the real
 * server does is tested in test/sdk/.
 */
type Socket = ServerWebSocket<{ url: string }>
type Script = { open?: (ws: Socket) => void; frame?: (ws: Socket, frame: any) => void }

const servers: ReturnType<typeof Bun.serve>[] = []
const clients: Client[] = []
afterEach(() => {
  for (const c of clients.splice(0)) c.close()
  for (const s of servers.splice(0)) s.stop(true)
})

/** A WebSocket server running `script`; records every frame and the URL of every connection. */
function scripted(script: Script) {
  const frames: any[] = []
  const urls: string[] = []
  const server = Bun.serve<{ url: string }, never>({
    port: 0,
    hostname: '127.0.0.1',
    fetch(req, srv) {
      urls.push(req.url)
      return srv.upgrade(req, { data: { url: req.url } }) ? undefined : new Response('no', { status: 400 })
    },
    websocket: {
      open: (ws) => script.open?.(ws),
      message: (ws, text) => {
        const frame = JSON.parse(String(text))
        frames.push(frame)
        // By default a token is accepted and pings are answered.
        if (frame.op === 'auth' && !script.frame) return void ws.send(JSON.stringify({ op: 'authed', ref: frame.ref, principal: 'u:ann', dedupWindowMs: 120_000 }))
        if (frame.op === 'ping' && !script.frame) return void ws.send(JSON.stringify({ op: 'pong', ref: frame.ref }))
        script.frame?.(ws, frame)
      },
    },
  })
  servers.push(server)
  return { url: `ws://127.0.0.1:${server.port}/v1/ws`, frames, urls, server }
}
const authed = (ws: Socket, ref: string, extra: object = {}) => ws.send(JSON.stringify({ op: 'authed', ref, principal: 'u:ann', dedupWindowMs: 120_000, ...extra }))
const track = (c: Client) => {
  clients.push(c)
  const seen: (Status & { at: number })[] = []
  c.on('status', (s) => void seen.push({ ...s, at: Date.now() }))
  return seen
}

describe('client against scripted servers', () => {
  test('a status listener that closes the client on reconnecting leaves no reconnect timer behind: the process exits', async () => {
    // In a process of its own: what is observed is that nothing keeps it alive. The server asks
    // for a 20 s wait before the reconnect; the listener closes the client and stops the server.
    const script = `
      import { createClient } from ${JSON.stringify(new URL('./index.ts', import.meta.url).pathname)}
      const server = Bun.serve({
        port: 0,
        hostname: '127.0.0.1',
        fetch: (req, srv) => (srv.upgrade(req) ? undefined : new Response('no', { status: 400 })),
        websocket: { open: (ws) => ws.close(4029, 'too_many_connections: reconnect after 20000 ms'), message() {} },
      })
      const c = createClient({ urls: ['ws://127.0.0.1:' + server.port + '/v1/ws'] })
      c.on('status', (s) => {
        if (s.state !== 'reconnecting') return
        console.log('reconnecting in ' + s.delayMs + ' ms: closing')
        c.close()
        server.stop(true)
      })
    `
    const started = Date.now()
    const child = Bun.spawn([process.execPath, '-e', script], { stdout: 'pipe', stderr: 'pipe' })
    const killer = setTimeout(() => child.kill(), 15_000)
    const code = await child.exited
    clearTimeout(killer)
    const out = await new Response(child.stdout).text()
    expect(out).toMatch(/^reconnecting in 2\d{4} ms: closing\n$/)
    expect(code).toBe(0)
    expect(Date.now() - started).toBeLessThan(10_000)
  }, 20_000)

  test('the token goes in the first frame, never in the URL; 1001 reconnects at once, to the next URL', async () => {
    // Whichever server the client picks first (it starts at a random one) shuts down after authing it.
    let shutDown = false
    const script: Script = {
      frame: (ws, f) => {
        if (f.op !== 'auth') return
        authed(ws, f.ref)
        if (!shutDown) {
          shutDown = true
          setTimeout(() => ws.close(1001, 'server shutting down'), 20)
        }
      },
    }
    const a = scripted(script)
    const b = scripted(script)
    const c = createClient({ urls: [a.url, b.url], token: 'secret-token-1', backoff: { minMs: 5000, maxMs: 5000 } })
    const seen = track(c)
    await until('connected twice', () => seen.filter((s) => s.state === 'connected').length === 2, 3000)
    const all = [...a.urls, ...b.urls]
    expect(all.every((u) => !u.includes('secret-token-1'))).toBe(true)
    expect([...a.frames, ...b.frames].filter((f) => f.op === 'auth').map((f) => f.token)).toEqual(['secret-token-1', 'secret-token-1'])
    const reconnecting = seen.find((s) => s.state === 'reconnecting')!
    expect(reconnecting).toMatchObject({ delayMs: 0, reason: { code: 1001 } })
    const connected = seen.filter((s) => s.state === 'connected').map((s) => (s as { url: string }).url)
    expect(connected[0]).not.toBe(connected[1])
  })

  test("a warning frame reaches the warning listeners, as the server sent it; a listener's throw is reported, the others still hear it", async () => {
    const warning = { code: 'rate_limit_near', message: '1 left: at most 1 commands per second per user (burst 8)', remaining: 1, burst: 8, perSecond: 1 }
    const s = scripted({
      frame: (ws, f) => {
        if (f.op === 'auth') {
          authed(ws, f.ref)
          ws.send(JSON.stringify({ op: 'warning', warning }))
        }
      },
    })
    const c = createClient({ urls: [s.url], token: 't' })
    track(c)
    const heard: unknown[] = []
    const errors: string[] = []
    c.on('warning', () => {
      throw new Error('boom')
    })
    c.on('warning', (w) => void heard.push(w))
    c.on('error', (e) => void errors.push(e.code))
    await until('warning heard', () => heard.length === 1, 3000)
    expect(heard).toEqual([warning])
    expect(errors).toEqual(['listener_error'])
  })

  test('4029 waits as long as the close reason says', async () => {
    let connections = 0
    const s = scripted({
      open: (ws) => {
        if (++connections === 1) ws.close(4029, 'rate_limited: reconnect after 1200 ms')
      },
    })
    const c = createClient({ urls: [s.url] })
    const seen = track(c)
    await until('reconnected', () => connections === 2, 5000)
    const closedAt = seen.find((x) => x.state === 'reconnecting')!
    const reconnectedAt = seen.filter((x) => x.state === 'connecting').at(-1)!
    expect(reconnectedAt.at - closedAt.at).toBeGreaterThanOrEqual(1190)
  })

  test('a server that cannot be reached: waits grow with full jitter, capped', async () => {
    const dead = scripted({})
    const url = dead.url
    dead.server.stop(true)
    const c = createClient({ urls: [url], backoff: { minMs: 20, maxMs: 200 } })
    const seen = track(c)
    await until('6 attempts', () => seen.filter((s) => s.state === 'reconnecting').length >= 6, 5000)
    const waits = seen.flatMap((s) => (s.state === 'reconnecting' ? [[s.attempt, s.delayMs]] : []))
    for (const [attempt, delay] of waits) expect(delay).toBeLessThan(Math.min(200, 20 * 2 ** (attempt - 1)))
    expect(waits.map(([a]) => a)).toEqual(waits.map((_, i) => i + 1))
  })

  test('a connection that stops answering is dropped after the pong timeout and replaced', async () => {
    let connections = 0
    const s = scripted({ open: () => void connections++, frame: () => {} })
    const c = createClient({ urls: [s.url], pingIntervalMs: 200, pongTimeoutMs: 300, backoff: { minMs: 10, maxMs: 10 } })
    const seen = track(c)
    await until('replaced', () => connections >= 2, 3000)
    expect(seen.find((x) => x.state === 'reconnecting')).toMatchObject({ reason: { code: 0, message: 'no answer to a ping within 300 ms' } })
    expect(s.frames.filter((f) => f.op === 'ping').length).toBeGreaterThanOrEqual(1)
  })

  test('a connection gone silent is found dead within pingIntervalMs + pongTimeoutMs, not up to two liveness checks later', async () => {
    // Liveness is checked every half of the shortest timeout (here 500 ms; by default 5 s): a ping
    // sent at the first check after 2 s of silence, and its timeout seen at the first check 1 s
    // after that, found the connection dead up to 4 s after its last frame (45 s by default, not 35).
    let last = 0
    const s = scripted({
      frame: (ws, f) => {
        if (f.op !== 'auth') return
        authed(ws, f.ref)
        // The last frame: just after a check (they run from the socket's open).
        setTimeout(() => (ws.send(JSON.stringify({ op: 'pong', ref: 'x' })), (last = Date.now())), 50)
      },
    })
    const c = createClient({ urls: [s.url], token: 't', pingIntervalMs: 2000, pongTimeoutMs: 1000, backoff: { minMs: 10, maxMs: 10 } })
    const seen = track(c)
    await until('found dead', () => seen.some((x) => x.state === 'reconnecting'), 6000, 5)
    const foundIn = seen.find((x) => x.state === 'reconnecting')!.at - last
    expect(foundIn).toBeGreaterThanOrEqual(2900)
    expect(foundIn).toBeLessThanOrEqual(3150)
  })

  test('the ping left unanswered on a connection found dead is not held against the next one', async () => {
    // The first connection never answers; the next ones answer pings but are slow with the rest
    // (here: an anonymous viewer's subscribe, answered after 1 s): nothing arrives before the first check.
    let connections = 0
    const s = scripted({
      open: () => void connections++,
      frame: (ws, f) => {
        if (connections === 1) return
        if (f.op === 'ping') ws.send(JSON.stringify({ op: 'pong', ref: f.ref }))
        if (f.op === 'subscribe') setTimeout(() => ws.send(JSON.stringify({ op: 'snapshot', channel: f.channel, version: 1, epoch: 'e1', data: { stream: 's', totals: { a: 1 } } })), 1000)
      },
    })
    const c = createClient({ urls: [s.url], pingIntervalMs: 200, pongTimeoutMs: 300, backoff: { minMs: 10, maxMs: 10 } })
    const seen = track(c)
    const sub = c.subscribe('reactions:s')
    await until('replaced', () => connections >= 2, 3000)
    await until('live on the second connection', () => sub.status === 'live', 3000)
    expect(connections).toBe(2)
    expect(seen.filter((x) => x.state === 'reconnecting').length).toBe(1)
  })

  test('4001 with a token function: a fresh token, reconnect, and the channel resumes with since and epoch', async () => {
    let connections = 0
    let tokens = 0
    const s = scripted({
      frame: (ws, f) => {
        if (f.op === 'auth') return authed(ws, f.ref)
        if (f.op === 'subscribe' && connections === 1) {
          ws.send(JSON.stringify({ op: 'snapshot', channel: f.channel, version: 3, epoch: 'e1', data: { stream: 's', totals: { '👏': 3 } } }))
          ws.send(JSON.stringify({ op: 'update', channel: f.channel, version: 4, epoch: 'e1', data: { counts: { '👏': 1 }, totals: { '👏': 4 } } }))
          setTimeout(() => ws.close(4001, 'token_expired'), 20)
        } else if (f.op === 'subscribe') {
          ws.send(JSON.stringify({ op: 'subscribed', channel: f.channel, version: f.since, epoch: f.epoch, recovered: true }))
          ws.send(JSON.stringify({ op: 'update', channel: f.channel, version: 5, epoch: 'e1', data: { counts: { '🔥': 2 }, totals: { '🔥': 2 } } }))
        }
      },
      open: () => void connections++,
    })
    const c = createClient({ urls: [s.url], token: async () => `t${++tokens}` })
    track(c)
    let resyncs = 0
    const sub = c.subscribe('reactions:s', { onResync: () => resyncs++ })
    await until('resumed', () => sub.version === 5, 3000)
    expect(sub.state).toEqual({ stream: 's', totals: { '👏': 4, '🔥': 2 } })
    expect(s.frames.filter((f) => f.op === 'subscribe').map(({ since, epoch }) => [since, epoch])).toEqual([
      [undefined, undefined],
      [4, 'e1'],
    ])
    expect(s.frames.filter((f) => f.op === 'auth').map((f) => f.token)).toEqual(['t1', 't2'])
    expect(resyncs).toBe(0)
  })

  test('a subscriber added while the client reconnects gets the state once the channel resumes, with no update to wait for', async () => {
    let connections = 0
    const s = scripted({
      frame: (ws, f) => {
        if (f.op === 'auth') return authed(ws, f.ref)
        if (f.op !== 'subscribe') return
        if (connections === 1) {
          ws.send(JSON.stringify({ op: 'snapshot', channel: f.channel, version: 3, epoch: 'e1', data: { stream: 's', totals: { '👏': 3 } } }))
          setTimeout(() => ws.close(1001, 'server shutting down'), 20)
        } else {
          // Nothing was missed: the resume brings no update, and the channel stays quiet.
          ws.send(JSON.stringify({ op: 'subscribed', channel: f.channel, version: f.since, epoch: f.epoch, recovered: true }))
        }
      },
      open: () => void connections++,
    })
    const c = createClient({ urls: [s.url], token: 't' })
    const first = c.subscribe('reactions:s')
    const states: unknown[] = []
    c.on('status', (st) => {
      // A view mounted during the reconnect (the first subscription's state is still readable).
      if (st.state === 'reconnecting' && states.length === 0) c.subscribe('reactions:s', { onState: (state) => void states.push(state) })
    })
    track(c)
    await until('resumed', () => s.frames.filter((f) => f.op === 'subscribe').length === 2 && first.status === 'live', 3000)
    await until('the late subscriber saw the state', () => states.length > 0, 1000)
    expect(states).toEqual([{ stream: 's', totals: { '👏': 3 } }])
  })

  test('an update that skips a version is not applied: the client reports the gap and asks for a snapshot', async () => {
    const s = scripted({
      frame: (ws, f) => {
        if (f.op === 'subscribe' && f.ref === 's1') {
          ws.send(JSON.stringify({ op: 'snapshot', channel: f.channel, version: 1, epoch: 'e1', data: { stream: 's', totals: { a: 1 } } }))
          ws.send(JSON.stringify({ op: 'update', channel: f.channel, version: 3, epoch: 'e1', data: { counts: { a: 1 }, totals: { a: 3 } } }))
        } else if (f.op === 'unsubscribe') {
          ws.send(JSON.stringify({ op: 'unsubscribed', ref: f.ref, channel: f.channel }))
        } else if (f.op === 'subscribe') {
          ws.send(JSON.stringify({ op: 'snapshot', channel: f.channel, version: 3, epoch: 'e1', data: { stream: 's', totals: { a: 3 } } }))
        }
      },
    })
    const c = createClient({ urls: [s.url] })
    track(c)
    const errors: string[] = []
    c.on('error', (e) => void errors.push(e.code))
    let resyncs = 0
    const sub = c.subscribe('reactions:s', { onResync: () => resyncs++ })
    await until('re-synced', () => resyncs === 1, 3000)
    expect(sub.state).toEqual({ stream: 's', totals: { a: 3 } })
    expect(errors).toEqual(['gap'])
    expect(s.frames.filter((f) => f.op !== 'ping').map((f) => [f.op, f.since])).toEqual([
      ['subscribe', undefined],
      ['unsubscribe', undefined],
      ['subscribe', undefined],
    ])
  })

  test('an event sent but never answered is resent with its id until the dedup window nears its end, then fails as unconfirmed', async () => {
    const s = scripted({
      frame: (ws, f) => {
        if (f.op === 'auth') return authed(ws, f.ref, { dedupWindowMs: 1500 })
        // The connection drops before any answer: the outcome of each send is unknown.
        if (f.op === 'publish') setTimeout(() => ws.close(1011, 'internal'), 10)
      },
    })
    const c = createClient({ urls: [s.url], token: 't', backoff: { minMs: 50, maxMs: 50 } })
    track(c)
    const started = Date.now()
    const err = await c.publish({ type: 'chat.message.posted', data: { room: 'r', user: 'ann', text: 'hi' } }).catch((e) => e)
    expect(err.code).toBe('unconfirmed')
    expect(Date.now() - started).toBeGreaterThanOrEqual(1300)
    const ids = s.frames.filter((f) => f.op === 'publish').map((f) => f.event.id)
    expect(ids.length).toBeGreaterThan(2)
    expect(new Set(ids).size).toBe(1)
  })

  test('an event sent but never answered, then no connection at all: it fails as unconfirmed when the dedup window nears its end, not when (if ever) a connection comes back', async () => {
    const s = scripted({
      frame: (ws, f) => {
        if (f.op === 'auth') return authed(ws, f.ref, { dedupWindowMs: 1500 })
        // The node dies with the event unanswered, and nothing answers at that address any more.
        if (f.op === 'publish') setTimeout(() => s.server.stop(true), 10)
      },
    })
    const c = createClient({ urls: [s.url], token: 't', backoff: { minMs: 50, maxMs: 50 } })
    const seen = track(c)
    const started = Date.now()
    const outcome = await Promise.race([
      c.publish({ type: 'chat.message.posted', data: { room: 'r', user: 'ann', text: 'hi' } }).catch((e) => e.code),
      Bun.sleep(4000).then(() => 'still pending after 4 s'),
    ])
    expect(outcome).toBe('unconfirmed')
    // 1500 ms less its 10 % margin after the send.
    expect(Date.now() - started).toBeGreaterThanOrEqual(1300)
    expect(Date.now() - started).toBeLessThan(2500)
    expect(seen.filter((x) => x.state === 'connected').length).toBe(1)
    expect(c.pending).toBe(0)
  })

  test('database_unavailable (nothing was published) is resent with the same id, also past the dedup window: never unconfirmed', async () => {
    let refusals = 0
    const s = scripted({
      frame: (ws, f) => {
        if (f.op === 'auth') return authed(ws, f.ref, { dedupWindowMs: 300 })
        if (f.op !== 'publish') return
        // Postgres away for longer than the dedup window: the room's visibility cannot be read.
        if (++refusals <= 6) return void ws.send(JSON.stringify({ op: 'error', ref: f.ref, error: { code: 'database_unavailable', message: 'the database is unavailable for now; retry shortly' } }))
        ws.send(JSON.stringify({ op: 'ack', ref: f.ref, id: f.event.id, seq: 1, duplicate: false }))
      },
    })
    const c = createClient({ urls: [s.url], token: 't', backoff: { minMs: 80, maxMs: 80 } })
    track(c)
    const ack = await c.publish({ type: 'chat.message.posted', data: { room: 'r', user: 'ann', text: 'hi' } })
    expect(ack.seq).toBe(1)
    const ids = s.frames.filter((f) => f.op === 'publish').map((f) => f.event.id)
    expect(ids.length).toBe(7)
    expect(new Set(ids).size).toBe(1)
  })

  test('subscribes refused together by a budget part-way to its next token come back at the rate it refills, not its first wait', async () => {
    // The server's budget (20/s) holds 0.98 of a subscribe: each refusal says "one more in 1 ms",
    // the time to its next token, not one refill apart. Spaced by that wait, 30 channels came back
    // ten times faster than the budget refills, were refused again and again (enough to be closed
    // 4029 as abusive by the real server: test/sdk/faults.int.test.ts, 90 channels past the address budget).
    const perSecond = 20
    let tokens = 0.98
    let at = performance.now()
    const take = () => {
      const t = performance.now()
      tokens = Math.min(5, tokens + ((t - at) * perSecond) / 1000)
      at = t
      if (tokens >= 1) return (tokens -= 1), 0
      return Math.ceil(((1 - tokens) * 1000) / perSecond)
    }
    let refused = 0
    const s = scripted({
      frame: (ws, f) => {
        if (f.op === 'auth') return authed(ws, f.ref)
        if (f.op !== 'subscribe') return
        const wait = take()
        if (wait === 0) return void ws.send(JSON.stringify({ op: 'snapshot', ref: f.ref, channel: f.channel, version: 1, epoch: 'e1', data: { stream: 's', totals: {} } }))
        refused++
        ws.send(JSON.stringify({ op: 'error', ref: f.ref, channel: f.channel, error: { code: 'rate_limited', message: 'slow down', retryAfterMs: wait, details: { retryAfterMs: wait, perSecond } } }))
      },
    })
    const c = createClient({ urls: [s.url], token: 't' })
    track(c)
    const subs = Array.from({ length: 30 }, (_, i) => c.subscribe(`reactions:s${i}`))
    await until('all live', () => subs.every((x) => x.status === 'live'), 10_000)
    // 30 refused at first (but the one that filled meanwhile); each retry one refill (50 ms) apart finds its token.
    expect(refused).toBeLessThanOrEqual(30 + 3)
  })

  test('outbox_full once max events wait; rate_limited refusals are resent in order after the wait', async () => {
    let seenE2 = false
    let refuseUntil = 0
    const order: string[] = []
    const s = scripted({
      frame: (ws, f) => {
        if (f.op === 'auth') return authed(ws, f.ref)
        if (f.op !== 'publish') return
        // e2 empties the bucket: it and whatever follows within 200 ms are refused, as the server's are.
        if (f.event.data.text === 'e2' && !seenE2) {
          seenE2 = true
          refuseUntil = Date.now() + 200
        }
        if (Date.now() < refuseUntil) {
          return void ws.send(JSON.stringify({ op: 'error', ref: f.ref, error: { code: 'rate_limited', message: 'slow down', retryAfterMs: refuseUntil - Date.now() } }))
        }
        order.push(f.event.data.text)
        ws.send(JSON.stringify({ op: 'ack', ref: f.ref, id: f.event.id, seq: order.length, duplicate: false }))
      },
    })
    const c = createClient({ urls: [s.url], token: 't', outbox: { max: 5, window: 8 } })
    track(c)
    const sends = Array.from({ length: 5 }, (_, i) => c.publish({ type: 'chat.message.posted', data: { room: 'r', user: 'ann', text: `e${i}` } }))
    await expect(c.publish({ type: 'chat.message.posted', data: { room: 'r', user: 'ann', text: 'e5' } })).rejects.toMatchObject({ code: 'outbox_full' })
    const started = Date.now()
    await Promise.all(sends)
    expect(Date.now() - started).toBeGreaterThanOrEqual(190)
    expect(order).toEqual(['e0', 'e1', 'e2', 'e3', 'e4'])
    // Each event kept its id through the refusal.
    const ids = new Map<string, Set<string>>()
    for (const f of s.frames.filter((x) => x.op === 'publish')) ids.set(f.event.data.text, (ids.get(f.event.data.text) ?? new Set()).add(f.event.id))
    expect([...ids.values()].map((x) => x.size)).toEqual([1, 1, 1, 1, 1])
  })
})
