import { afterEach, describe, expect, test } from 'bun:test'
import type { ServerWebSocket } from 'bun'
import { createClient, type Client, type Status } from './index'
import { until } from '../../core/testing/wait'

/**
 * The client against servers that misbehave on purpose (a bug, a proxy, an attacker on the
 * path): whatever they send, the client must neither throw out of its socket handlers, nor spin
 * (timers that fire at once, subscribe loops), nor show a state it cannot vouch for.
 */
type Socket = ServerWebSocket<{ url: string }>
/** `noPong`: pings go unanswered (the scripted servers answer them by default). */
type Script = { open?: (ws: Socket) => void; frame?: (ws: Socket, frame: any) => void; noPong?: boolean }

const servers: ReturnType<typeof Bun.serve>[] = []
const clients: Client[] = []
afterEach(() => {
  for (const c of clients.splice(0)) c.close()
  for (const s of servers.splice(0)) s.stop(true)
})

function scripted(script: Script) {
  const frames: any[] = []
  let connections = 0
  const server = Bun.serve<{ url: string }, never>({
    port: 0,
    hostname: '127.0.0.1',
    fetch(req, srv) {
      connections++
      return srv.upgrade(req, { data: { url: req.url } }) ? undefined : new Response('no', { status: 400 })
    },
    websocket: {
      open: (ws) => script.open?.(ws),
      message: (ws, text) => {
        const frame = JSON.parse(String(text))
        frames.push(frame)
        if (frame.op === 'ping' && !script.noPong) return void ws.send(JSON.stringify({ op: 'pong', ref: frame.ref }))
        script.frame?.(ws, frame)
      },
    },
  })
  servers.push(server)
  return { url: `ws://127.0.0.1:${server.port}/v1/ws`, frames, server, connections: () => connections }
}
const keep = (c: Client) => (clients.push(c), c)
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

describe('client against hostile servers', () => {
  test('a 4029 asking for a wait longer than a timer can hold does not reconnect at once', async () => {
    // setTimeout treats a delay above 2^31-1 ms as 1 ms (Bun and Node alike): unclamped, this is a reconnect loop.
    const s = scripted({ open: (ws) => ws.close(4029, 'rate_limited: reconnect after 99999999999 ms') })
    keep(createClient({ urls: [s.url], backoff: { minMs: 1000, maxMs: 1000 } }))
    await until('first connection', () => s.connections() >= 1, 3000)
    await sleep(500)
    expect(s.connections()).toBe(1)
  })

  test('a subscribe refused with a retryAfterMs longer than a timer can hold is not sent again at once', async () => {
    const s = scripted({
      open: (ws) => ws.send(JSON.stringify({ op: 'ready' })),
      frame: (ws, f) => {
        if (f.op === 'subscribe') ws.send(JSON.stringify({ op: 'error', ref: f.ref, channel: f.channel, error: { code: 'rate_limited', message: 'slow down', retryAfterMs: 99999999999 } }))
      },
    })
    const c = keep(createClient({ urls: [s.url] }))
    c.on('error', () => {})
    c.subscribe('reactions:s')
    await until('first subscribe', () => s.frames.some((f) => f.op === 'subscribe'), 3000)
    await sleep(300)
    expect(s.frames.filter((f) => f.op === 'subscribe').length).toBe(1)
  })

  test('several subscribes refused with such a retryAfterMs: none is sent again at once (their retries are spaced, each wait capped)', async () => {
    const s = scripted({
      frame: (ws, f) => {
        if (f.op === 'subscribe') ws.send(JSON.stringify({ op: 'error', ref: f.ref, channel: f.channel, error: { code: 'rate_limited', message: 'slow down', retryAfterMs: 2 ** 31 - 1 } }))
      },
    })
    const c = keep(createClient({ urls: [s.url] }))
    c.on('error', () => {})
    for (const ch of ['reactions:a', 'reactions:b', 'reactions:c']) c.subscribe(ch)
    await until('first subscribes', () => s.frames.filter((f) => f.op === 'subscribe').length === 3, 3000)
    await sleep(300)
    expect(s.frames.filter((f) => f.op === 'subscribe').length).toBe(3)
  })

  test('frames that are JSON but not frames (null, an error without its error) are reported, not thrown, and the channel goes on', async () => {
    const s = scripted({
      frame: (ws, f) => {
        if (f.op !== 'subscribe') return
        for (const bad of ['null', '42', '"text"', '[]', '{"op":"error"}', '{"op":"error","ref":"p1"}', '{"op":"ack"}'])
          ws.send(bad)
        ws.send(JSON.stringify({ op: 'snapshot', channel: f.channel, version: 1, epoch: 'e1', data: { stream: 's', totals: { a: 1 } } }))
      },
    })
    const thrown: unknown[] = []
    const onError = (e: unknown) => void thrown.push(e)
    process.on('uncaughtException', onError)
    try {
      const c = keep(createClient({ urls: [s.url] }))
      const errors: string[] = []
      c.on('error', (e) => void errors.push(e.code))
      const sub = c.subscribe('reactions:s')
      await until('snapshot', () => sub.state !== undefined, 3000)
      expect(sub.state).toEqual({ stream: 's', totals: { a: 1 } })
      expect(thrown).toEqual([])
      expect(errors).toEqual([...Array(6).fill('bad_frame'), 'unexpected_frame'])
    } finally {
      process.off('uncaughtException', onError)
    }
  })

  test('a server that answers every snapshot with a gap makes the client back off, not loop', async () => {
    const s = scripted({
      frame: (ws, f) => {
        if (f.op === 'subscribe') {
          ws.send(JSON.stringify({ op: 'snapshot', channel: f.channel, version: 1, epoch: 'e1', data: { stream: 's', totals: { a: 1 } } }))
          ws.send(JSON.stringify({ op: 'update', channel: f.channel, version: 5, epoch: 'e1', data: { counts: { a: 1 }, totals: { a: 5 } } }))
        } else if (f.op === 'unsubscribe') {
          ws.send(JSON.stringify({ op: 'unsubscribed', ref: f.ref, channel: f.channel }))
        }
      },
    })
    const c = keep(createClient({ urls: [s.url], backoff: { minMs: 200, maxMs: 1000 } }))
    c.on('error', () => {})
    c.subscribe('reactions:s')
    await sleep(1000)
    // Unbounded, this is hundreds of subscribes a second; with backoff (full jitter from 200 ms, doubling) a handful.
    expect(s.frames.filter((f) => f.op === 'subscribe').length).toBeLessThan(15)
  })
})

describe('client on a channel that keeps needing snapshots', () => {
  test('the wait between re-syncs stops growing at 4x the backoff minimum: a board whose updates keep asking for snapshots does not go stale for long', async () => {
    const at: number[] = []
    const s = scripted({
      frame: (ws, f) => {
        if (f.op === 'subscribe') {
          at.push(Date.now())
          ws.send(JSON.stringify({ op: 'snapshot', channel: f.channel, version: 1, epoch: 'e1', data: { stream: 's', totals: { a: 1 } } }))
          ws.send(JSON.stringify({ op: 'update', channel: f.channel, version: 5, epoch: 'e1', data: { counts: { a: 1 }, totals: { a: 5 } } }))
        } else if (f.op === 'unsubscribe') {
          ws.send(JSON.stringify({ op: 'unsubscribed', ref: f.ref, channel: f.channel }))
        }
      },
    })
    const c = keep(createClient({ urls: [s.url], backoff: { minMs: 100, maxMs: 30_000 } }))
    c.on('error', () => {})
    c.subscribe('reactions:s')
    await sleep(2500)
    const gaps = at.slice(1).map((t, i) => t - at[i])
    expect(gaps.length).toBeGreaterThanOrEqual(4)
    // Capped, every wait is at most 400 ms (plus a round trip); growing to 30 s, it would pass that within a few re-syncs.
    expect(Math.max(...gaps)).toBeLessThan(550)
  })
})

describe('client against a server that answers a resume wrongly', () => {
  test('a resume answered `subscribed` in another epoch (or at another version) re-syncs instead of keeping the old state as live', async () => {
    let connection = 0
    const s = scripted({
      open: () => void connection++,
      frame: (ws, f) => {
        if (f.op === 'subscribe' && f.since === undefined) {
          ws.send(JSON.stringify({ op: 'snapshot', channel: f.channel, version: 3, epoch: connection === 1 ? 'e1' : 'e2', data: { stream: 's', totals: { a: 3 } } }))
          if (connection === 1) setTimeout(() => ws.close(1001, 'server shutting down'), 20)
        } else if (f.op === 'subscribe') {
          // The resume asked for e1/3; the channel was rebuilt and this server claims e2/3 is the same history.
          ws.send(JSON.stringify({ op: 'subscribed', channel: f.channel, version: 3, epoch: 'e2', recovered: true }))
        } else if (f.op === 'unsubscribe') {
          ws.send(JSON.stringify({ op: 'unsubscribed', ref: f.ref, channel: f.channel }))
        }
      },
    })
    const c = keep(createClient({ urls: [s.url], backoff: { minMs: 10, maxMs: 10 } }))
    const errors: string[] = []
    c.on('error', (e) => void errors.push(e.code))
    const sub = c.subscribe('reactions:s')
    await until('resumed on the second connection', () => s.frames.some((f) => f.op === 'subscribe' && f.since === 3), 3000)
    await until('a fresh snapshot of e2', () => sub.epoch === 'e2' && sub.status === 'live', 2000)
    expect(errors).toContain('gap')
    expect(s.frames.filter((f) => f.op === 'subscribe').map((f) => [f.since, f.epoch])).toEqual([
      [undefined, undefined],
      [3, 'e1'],
      [undefined, undefined],
    ])
  })
})

describe('client whose re-sync crosses a snapshot of the server', () => {
  test('a snapshot that arrives while its re-sync unsubscribe is on the way: the unsubscribed that follows subscribes again, the channel is not left live without a subscription', async () => {
    let subscribes = 0
    const s = scripted({
      frame: (ws, f) => {
        if (f.op === 'subscribe' && ++subscribes === 1) {
          ws.send(JSON.stringify({ op: 'snapshot', channel: f.channel, version: 1, epoch: 'e1', data: { stream: 's', totals: { a: 1 } } }))
          // A gap: the client re-syncs (unsubscribe, then subscribe).
          ws.send(JSON.stringify({ op: 'update', channel: f.channel, version: 5, epoch: 'e1', data: { counts: { a: 1 }, totals: { a: 5 } } }))
        } else if (f.op === 'unsubscribe') {
          // The server had re-synced the channel itself before it read the unsubscribe.
          ws.send(JSON.stringify({ op: 'snapshot', channel: f.channel, version: 6, epoch: 'e1', resync: true, data: { stream: 's', totals: { a: 6 } } }))
          ws.send(JSON.stringify({ op: 'unsubscribed', ref: f.ref, channel: f.channel }))
        } else if (f.op === 'subscribe') {
          ws.send(JSON.stringify({ op: 'subscribed', ref: f.ref, channel: f.channel, version: 6, epoch: 'e1', recovered: true }))
          ws.send(JSON.stringify({ op: 'update', channel: f.channel, version: 7, epoch: 'e1', data: { counts: { a: 1 }, totals: { a: 7 } } }))
        }
      },
    })
    const c = keep(createClient({ urls: [s.url] }))
    c.on('error', () => {})
    const sub = c.subscribe('reactions:s')
    await until('subscribed again after the unsubscribe, and following', () => sub.version === 7 && sub.status === 'live', 3000).catch(() => {
      throw new Error(`status ${sub.status} at version ${sub.version}; frames sent: ${s.frames.map((f) => f.op).join(', ')}`)
    })
    expect(sub.state).toEqual({ stream: 's', totals: { a: 7 } })
  })
})

describe('client against a server that repeats token_expiring', () => {
  test('the same token_expiring sent again and again asks the token function once, not once per frame', async () => {
    const expiresAt = new Date(Date.now() + 20_000).toISOString()
    const s = scripted({
      frame: (ws, f) => {
        if (f.op !== 'auth') return
        ws.send(JSON.stringify({ op: 'authed', ref: f.ref, principal: 'u:ann', expiresAt, dedupWindowMs: 120_000 }))
        if (f.ref !== 'auth') return
        let n = 0
        const t = setInterval(() => {
          if (++n > 20) return clearInterval(t)
          ws.send(JSON.stringify({ op: 'token_expiring', expiresAt }))
        }, 10)
      },
    })
    let calls = 0
    const c = keep(createClient({ urls: [s.url], token: async () => `token-${++calls}` }))
    await until('connected', () => c.status.state === 'connected', 3000)
    await sleep(400)
    // The first call is for connecting, the second for the renewal; the 19 repeats ask nothing.
    expect(calls).toBe(2)
    expect(s.frames.filter((f) => f.op === 'auth' && f.ref === 'renew').length).toBe(1)
  })
})

describe('client against a server that leaves requests unanswered', () => {
  const snapshot = (ws: Socket, channel: string, version: number) =>
    ws.send(JSON.stringify({ op: 'snapshot', channel, version, epoch: 'e1', data: { stream: 's', totals: { a: version } } }))

  test('a subscribe never answered: after requestTimeoutMs the connection is replaced and the channel subscribes on the next one', async () => {
    let connection = 0
    const s = scripted({
      open: () => void connection++,
      frame: (ws, f) => {
        // The first connection answers pings but never a subscribe (a node stuck on its database).
        if (f.op === 'subscribe' && connection > 1) snapshot(ws, f.channel, 1)
      },
    })
    const c = keep(createClient({ urls: [s.url], requestTimeoutMs: 300, backoff: { minMs: 10, maxMs: 10 } }))
    const sub = c.subscribe('reactions:s')
    await until('live on a later connection', () => sub.status === 'live', 3000)
    expect(s.connections()).toBe(2)
    expect(sub.state).toEqual({ stream: 's', totals: { a: 1 } })
  })

  test('the unsubscribe of a re-sync never answered: the connection is replaced and the channel gets its fresh snapshot', async () => {
    let connection = 0
    const s = scripted({
      open: () => void connection++,
      frame: (ws, f) => {
        if (f.op === 'subscribe' && connection === 1) {
          snapshot(ws, f.channel, 1)
          // A gap: the client asks for a fresh snapshot (unsubscribe, then subscribe), which this connection never answers.
          ws.send(JSON.stringify({ op: 'update', channel: f.channel, version: 5, epoch: 'e1', data: { counts: { a: 1 }, totals: { a: 5 } } }))
        } else if (f.op === 'subscribe') {
          snapshot(ws, f.channel, 7)
        }
      },
    })
    const c = keep(createClient({ urls: [s.url], requestTimeoutMs: 300, backoff: { minMs: 10, maxMs: 10 } }))
    c.on('error', () => {})
    const sub = c.subscribe('reactions:s')
    await until('re-synced on a later connection', () => sub.version === 7 && sub.status === 'live', 3000)
    expect(s.connections()).toBe(2)
    // The state held could not be continued: the next connection asks for a snapshot, not a resume.
    expect(s.frames.filter((f) => f.op === 'subscribe').map((f) => f.since)).toEqual([undefined, undefined])
  })

  test('a publish never answered: the connection is replaced and the event is resent with its id, then acknowledged', async () => {
    let connection = 0
    const s = scripted({
      open: () => void connection++,
      frame: (ws, f) => {
        if (f.op === 'publish' && connection > 1) ws.send(JSON.stringify({ op: 'ack', ref: f.ref, id: f.event.id, seq: 1, duplicate: false }))
      },
    })
    const c = keep(createClient({ urls: [s.url], requestTimeoutMs: 300, backoff: { minMs: 10, maxMs: 10 } }))
    const ack = await c.publish({ type: 'chat.message.posted', data: { room: 'r', user: 'ann', text: 'hi' } })
    const ids = s.frames.filter((f) => f.op === 'publish').map((f) => f.event.id)
    expect(ids).toEqual([ack.id, ack.id])
    expect(s.connections()).toBe(2)
  })

  test('answered requests keep the connection: a server that answers is never dropped for a timeout', async () => {
    const s = scripted({
      frame: (ws, f) => {
        if (f.op === 'subscribe') snapshot(ws, f.channel, 1)
        if (f.op === 'publish') ws.send(JSON.stringify({ op: 'ack', ref: f.ref, id: f.event.id, seq: 1, duplicate: false }))
      },
    })
    const c = keep(createClient({ urls: [s.url], requestTimeoutMs: 200 }))
    const sub = c.subscribe('reactions:s')
    await c.publish({ type: 'chat.message.posted', data: { room: 'r', user: 'ann', text: 'hi' } })
    await sleep(700)
    expect(sub.status).toBe('live')
    expect(s.connections()).toBe(1)
  })
})

describe('client against channel errors without a ref', () => {
  const live = (ws: Socket, f: any) =>
    ws.send(JSON.stringify({ op: 'snapshot', channel: f.channel, version: 1, epoch: 'e1', data: { stream: 's', totals: { a: 1 } } }))

  for (const code of ['unavailable', 'rate_limited', 'internal']) {
    test(`a transient one (${code}) is retried after the wait the server asks for, and the channel resumes`, async () => {
      let subscribes = 0
      let erroredAt = 0
      const s = scripted({
        frame: (ws, f) => {
          if (f.op === 'subscribe' && ++subscribes === 1) {
            live(ws, f)
            erroredAt = Date.now()
            ws.send(JSON.stringify({ op: 'error', channel: f.channel, error: { code, message: 'for a moment', retryAfterMs: 300 } }))
          } else if (f.op === 'subscribe') {
            ws.send(JSON.stringify({ op: 'subscribed', ref: f.ref, channel: f.channel, version: 1, epoch: 'e1', recovered: true }))
          } else if (f.op === 'unsubscribe') {
            ws.send(JSON.stringify({ op: 'unsubscribed', ref: f.ref, channel: f.channel, wasSubscribed: false }))
          }
        },
      })
      const c = keep(createClient({ urls: [s.url] }))
      const reported: string[] = []
      const failed: string[] = []
      c.on('error', (e) => void reported.push(e.code))
      const sub = c.subscribe('reactions:s', { onError: (e) => void failed.push(e.code) })
      await until('the second subscribe', () => subscribes === 2, 3000)
      expect(Date.now() - erroredAt).toBeGreaterThanOrEqual(290)
      await until('live again', () => sub.status === 'live', 2000)
      expect(failed).toEqual([])
      expect(reported).toEqual([code])
      // Resumed where it was: the state held is exact as of its version.
      expect(s.frames.filter((f) => f.op === 'subscribe').map((f) => [f.since, f.epoch])).toEqual([
        [undefined, undefined],
        [1, 'e1'],
      ])
      expect(sub.state).toEqual({ stream: 's', totals: { a: 1 } })
    })
  }

  test('a final one (forbidden) ends the subscription and is reported to it, as before', async () => {
    const s = scripted({
      frame: (ws, f) => {
        if (f.op !== 'subscribe') return
        live(ws, f)
        ws.send(JSON.stringify({ op: 'error', channel: f.channel, error: { code: 'forbidden', message: 'private now' } }))
        ws.send(JSON.stringify({ op: 'unsubscribed', channel: f.channel, reason: 'forbidden' }))
      },
    })
    const c = keep(createClient({ urls: [s.url] }))
    const failed: string[] = []
    const sub = c.subscribe('reactions:s', { onError: (e) => void failed.push(e.code) })
    await until('failed', () => sub.status === 'failed', 3000)
    await sleep(300)
    expect(failed).toEqual(['forbidden'])
    expect(s.frames.filter((f) => f.op === 'subscribe').length).toBe(1)
  })
})

describe('client whose token function does not answer', () => {
  const authing = (extra: (ws: Socket, f: any) => void = () => {}) =>
    scripted({
      frame: (ws, f) => {
        if (f.op !== 'auth') return
        ws.send(JSON.stringify({ op: 'authed', ref: f.ref, principal: 'u:ann', dedupWindowMs: 120_000 }))
        extra(ws, f)
      },
    })

  test('a call that never settles is given up after tokenTimeoutMs: token_timeout is reported, its signal aborted, and after the backoff a new call connects', async () => {
    const s = authing()
    const signals: AbortSignal[] = []
    let calls = 0
    const c = keep(
      createClient({
        urls: [s.url],
        token: ({ signal }) => (signals.push(signal), ++calls === 1 ? new Promise<string>(() => {}) : Promise.resolve(`t${calls}`)),
        tokenTimeoutMs: 300,
        backoff: { minMs: 10, maxMs: 10 },
      }),
    )
    const errors: string[] = []
    const seen: string[] = []
    c.on('error', (e) => void errors.push(e.code))
    c.on('status', (st) => void seen.push(st.state === 'reconnecting' ? `reconnecting: ${st.reason.message}` : st.state))
    await until('connected', () => c.status.state === 'connected', 3000).catch(() => {
      throw new Error(`still ${c.status.state} after 3 s; statuses: ${seen.join(', ')}; errors: ${errors.join(', ')}`)
    })
    expect(errors).toEqual(['token_timeout'])
    expect(seen).toEqual(['reconnecting: the token function did not answer within 300 ms', 'connecting', 'connected'])
    // The given-up call was told (its fetch aborted); the one that answered was not.
    expect(signals.map((sg) => [sg.aborted, (sg.reason as { code?: string } | undefined)?.code])).toEqual([
      [true, 'token_timeout'],
      [false, undefined],
    ])
    expect(calls).toBe(2)
    expect(s.frames.filter((f) => f.op === 'auth').map((f) => f.token)).toEqual(['t2'])
  })

  test('a call that rejects is reported as token_refresh_failed (not only as a status), and retried after the backoff', async () => {
    const s = authing()
    let calls = 0
    const c = keep(
      createClient({
        urls: [s.url],
        token: () => (++calls === 1 ? Promise.reject(new Error('auth service down')) : Promise.resolve(`t${calls}`)),
        backoff: { minMs: 10, maxMs: 10 },
      }),
    )
    const errors: string[] = []
    c.on('error', (e) => void errors.push(`${e.code}: ${e.message}`))
    await until('connected', () => c.status.state === 'connected', 3000)
    expect(errors).toEqual(['token_refresh_failed: the token function failed: auth service down'])
    expect(s.frames.filter((f) => f.op === 'auth').map((f) => f.token)).toEqual(['t2'])
  })

  test("a timed-out call's late answer is ignored: it is never sent, and it does not end the call made after it (still one call at a time)", async () => {
    let socket: Socket | undefined
    let auths = 0
    const expiresAt = () => new Date(Date.now() + 3000).toISOString()
    const s = scripted({
      open: (ws) => void (socket = ws),
      frame: (ws, f) => {
        if (f.op !== 'auth') return
        // A token 3 s from expiry: within the skew, so a reconnect needs a fresh one.
        ws.send(JSON.stringify({ op: 'authed', ref: f.ref, principal: 'u:ann', expiresAt: expiresAt(), dedupWindowMs: 120_000 }))
        if (++auths === 1) setTimeout(() => ws.send(JSON.stringify({ op: 'token_expiring', expiresAt: expiresAt() })), 20)
      },
    })
    let late!: (t: string) => void
    let calls = 0
    const token = () => {
      const n = ++calls
      // 1: connecting; times out and answers late.
      if (n === 1) return new Promise<string>((r) => (late = r))
      // 2: connecting again after the timeout.
      if (n === 2) return Promise.resolve('t2')
      // 3: the renewal; while it is under way the first call answers, then the node shuts down:
      // the reconnect needs a token too and must share this call, not start a fourth.
      if (n === 3) {
        setTimeout(() => late('late-token'), 100)
        setTimeout(() => socket?.close(1001, 'server shutting down'), 250)
        return new Promise<string>((r) => setTimeout(() => r('t3'), 600))
      }
      return Promise.resolve(`t${n}`)
    }
    const c = keep(createClient({ urls: [s.url], token, tokenTimeoutMs: 1000, backoff: { minMs: 10, maxMs: 10 } }))
    c.on('error', () => {})
    await until('connected with the renewal token', () => s.frames.filter((f) => f.op === 'auth' && f.ref === 'auth').length === 2 && c.status.state === 'connected', 5000)
    await sleep(200)
    expect(s.frames.filter((f) => f.op === 'auth').map((f) => f.token)).toEqual(['t2', 't3'])
    expect(calls).toBe(3)
  })

  test('tokenTimeoutMs: Infinity means no limit, not a timeout at once (a timer given more than 2^31-1 ms fires at once)', async () => {
    const s = authing()
    const c = keep(createClient({ urls: [s.url], token: () => new Promise<string>((r) => setTimeout(() => r('slow'), 300)), tokenTimeoutMs: Infinity }))
    const errors: string[] = []
    c.on('error', (e) => void errors.push(e.code))
    await until('connected', () => c.status.state === 'connected', 3000)
    expect(errors).toEqual([])
    expect(s.frames.filter((f) => f.op === 'auth').map((f) => f.token)).toEqual(['slow'])
  })

  test('a renewal (token_expiring) that never answers is reported as token_timeout; the connection goes on', async () => {
    const expiresAt = new Date(Date.now() + 20_000).toISOString()
    const s = authing((ws, f) => {
      if (f.ref === 'auth') ws.send(JSON.stringify({ op: 'token_expiring', expiresAt }))
    })
    let calls = 0
    const c = keep(createClient({ urls: [s.url], token: () => (++calls === 1 ? Promise.resolve('t1') : new Promise<string>(() => {})), tokenTimeoutMs: 300 }))
    const errors: string[] = []
    c.on('error', (e) => void errors.push(e.code))
    await until('the renewal timed out', () => errors.length > 0, 3000)
    expect(errors).toEqual(['token_timeout'])
    expect(c.status.state).toBe('connected')
  })
})

describe('client waits that must end', () => {
  /** A TCP server that accepts connections and never answers (a black hole behind a load balancer): the WebSocket never opens. */
  function silentTcp() {
    let connections = 0
    const server = Bun.listen({ hostname: '127.0.0.1', port: 0, socket: { open: () => void connections++, data: () => {} } })
    stops.push(() => server.stop(true))
    return { url: `ws://127.0.0.1:${server.port}/v1/ws`, connections: () => connections }
  }
  const stops: (() => void)[] = []
  afterEach(() => {
    for (const stop of stops.splice(0)) stop()
  })

  test('a WebSocket that never opens is given up after connectTimeoutMs and tried again after the backoff', async () => {
    const s = silentTcp()
    const c = keep(createClient({ urls: [s.url], connectTimeoutMs: 300, backoff: { minMs: 10, maxMs: 10 } }))
    await until('tried again', () => s.connections() >= 2, 3000)
    expect(c.status.state).not.toBe('connected')
  })

  test('a server that opens the WebSocket but never answers the auth frame: given up after connectTimeoutMs', async () => {
    const s = scripted({})
    const c = keep(createClient({ urls: [s.url], token: 't', connectTimeoutMs: 300, backoff: { minMs: 10, maxMs: 10 } }))
    const seen: string[] = []
    c.on('status', (st) => void seen.push(st.state === 'reconnecting' ? st.reason.message : st.state))
    await until('tried again', () => s.connections() >= 2, 3000)
    expect(seen[0]).toBe('not connected within 300 ms')
  })

  for (const during of ['a token call', 'a WebSocket opening', 'the auth'] as const) {
    test(`close() during ${during}: closed at once, publishes fail with closed, and nothing connects after`, async () => {
      const tcp = silentTcp()
      const s = scripted({})
      const url = during === 'a WebSocket opening' ? tcp.url : s.url
      let answer: ((t: string) => void) | undefined
      let signal: AbortSignal | undefined
      const token = during === 'a token call' ? (o: { signal: AbortSignal }) => ((signal = o.signal), new Promise<string>((r) => (answer = r))) : async () => 't'
      const c = keep(createClient({ urls: [url], token, tokenTimeoutMs: 200, connectTimeoutMs: 200, backoff: { minMs: 10, maxMs: 10 } }))
      const errors: string[] = []
      c.on('error', (e) => void errors.push(e.code))
      if (during === 'a token call') await until('the token call', () => answer !== undefined, 3000)
      if (during === 'a WebSocket opening') await until('the connection', () => tcp.connections() === 1, 3000)
      if (during === 'the auth') await until('the auth frame', () => s.frames.some((f) => f.op === 'auth'), 3000)
      const sent = c.publish({ type: 'chat.message.posted', data: { room: 'r', user: 'ann', text: 'hi' } })
      c.close()
      expect(c.status.state).toBe('closed')
      if (during === 'a token call') expect(signal?.aborted).toBe(true)
      await expect(sent).rejects.toMatchObject({ code: 'closed' })
      answer?.('late')
      // Past every timeout and backoff: nothing more happened.
      await sleep(500)
      expect(c.status.state).toBe('closed')
      expect(tcp.connections() + s.connections()).toBe(during === 'a token call' ? 0 : 1)
      expect(errors).toEqual([])
    })
  }

  test('an unsubscribe never answered waits for nothing: the subscription ends at once, the connection stays, and the channel can be followed again', async () => {
    let subscribes = 0
    const s = scripted({
      frame: (ws, f) => {
        // Every subscribe is answered; no unsubscribe ever is.
        if (f.op === 'subscribe') ws.send(JSON.stringify({ op: 'snapshot', channel: f.channel, version: ++subscribes, epoch: 'e1', data: { stream: 's', totals: { a: subscribes } } }))
      },
    })
    const c = keep(createClient({ urls: [s.url], requestTimeoutMs: 200 }))
    const first = c.subscribe('reactions:s')
    await until('live', () => first.status === 'live', 3000)
    first.unsubscribe()
    expect(first.status).toBe('closed')
    await until('the unsubscribe sent', () => s.frames.some((f) => f.op === 'unsubscribe'), 3000)
    // Three times requestTimeoutMs: no answer is waited for, so the connection is not replaced.
    await sleep(600)
    const again = c.subscribe('reactions:s')
    await until('live again', () => again.status === 'live', 3000)
    await sleep(600)
    expect(again.version).toBe(2)
    expect(again.status).toBe('live')
    expect(s.connections()).toBe(1)
  })
})

describe('client whose platform or app throws', () => {
  test('a WebSocket class that throws when constructed (a browser refusing ws:// from an https page) is retried with backoff, not left connecting', async () => {
    const s = scripted({ frame: (ws, f) => f.op === 'auth' && ws.send(JSON.stringify({ op: 'authed', ref: f.ref, principal: 'u:ann', dedupWindowMs: 120_000 })) })
    let made = 0
    const Refusing = class extends WebSocket {
      constructor(url: string | URL) {
        if (++made === 1) throw new DOMException('An insecure WebSocket connection may not be initiated from a page loaded over HTTPS.', 'SecurityError')
        super(url)
      }
    }
    // (A token function: the first socket is made after the listeners below are on.)
    const c = keep(createClient({ urls: [s.url], WebSocket: Refusing, token: async () => 't', backoff: { minMs: 10, maxMs: 10 } }))
    const seen: string[] = []
    c.on('status', (st) => void seen.push(st.state === 'reconnecting' ? `reconnecting: ${st.reason.message}` : st.state))
    await until('connected', () => c.status.state === 'connected', 3000).catch(() => {
      throw new Error(`still ${c.status.state}; statuses: ${seen.join(', ')}`)
    })
    expect(seen[0]).toBe('reconnecting: the WebSocket could not be created: An insecure WebSocket connection may not be initiated from a page loaded over HTTPS.')
  })

  test('a status listener that throws is reported as listener_error and does not stop the client (connecting, reconnecting, channels, publishes)', async () => {
    let connection = 0
    const s = scripted({
      open: (ws) => {
        // The first connection drops at once: the client must get through reconnecting too.
        if (++connection === 1) setTimeout(() => ws.close(1011, 'oops'), 20)
      },
      frame: (ws, f) => {
        if (f.op === 'subscribe') ws.send(JSON.stringify({ op: 'snapshot', channel: f.channel, version: 1, epoch: 'e1', data: { stream: 's', totals: { a: 1 } } }))
        if (f.op === 'publish') ws.send(JSON.stringify({ op: 'ack', ref: f.ref, id: f.event.id, seq: 1, duplicate: false }))
      },
    })
    const c = keep(createClient({ urls: [s.url], backoff: { minMs: 10, maxMs: 10 } }))
    const errors: string[] = []
    c.on('error', (e) => void errors.push(e.code))
    c.on('status', () => {
      throw new Error('a bug in the app')
    })
    const sub = c.subscribe('reactions:s')
    await until('live on the second connection', () => connection === 2 && sub.status === 'live', 3000)
    const ack = await Promise.race([c.publish({ type: 'chat.message.posted', data: { room: 'r', user: 'ann', text: 'hi' } }), sleep(3000).then(() => undefined)])
    expect(ack).toMatchObject({ seq: 1 })
    expect(c.status.state).toBe('connected')
    expect(errors.length).toBeGreaterThan(0)
    expect(new Set(errors)).toEqual(new Set(['listener_error']))
  })

  for (const token of [undefined, 'fixed-token']) {
    test(`close() called by a status listener as a reconnect starts (${token ? 'a token string' : 'anonymous'}): stays closed, nothing connects`, async () => {
      let connection = 0
      const s = scripted({
        open: (ws) => {
          if (++connection === 1) setTimeout(() => ws.close(1011, 'oops'), 20)
        },
        frame: (ws, f) => f.op === 'auth' && ws.send(JSON.stringify({ op: 'authed', ref: f.ref, principal: 'u:ann', dedupWindowMs: 120_000 })),
      })
      const c = keep(createClient({ urls: [s.url], ...(token ? { token } : {}), backoff: { minMs: 10, maxMs: 10 } }))
      const seen: string[] = []
      c.on('status', (st) => {
        seen.push(st.state)
        if (st.state === 'connecting') c.close()
      })
      await until('closed', () => c.status.state === 'closed', 3000)
      await sleep(300)
      expect(seen).toEqual(['connected', 'reconnecting', 'connecting', 'closed'])
      expect(c.status.state).toBe('closed')
      expect(connection).toBe(1)
    })
  }
})

describe('client closed for good', () => {
  test('its subscriptions are no longer shown live: close() by the app, and a 4003 (revoked) from the server', async () => {
    for (const how of ['close()', '4003'] as const) {
      const s = scripted({
        frame: (ws, f) => {
          if (f.op === 'subscribe') {
            ws.send(JSON.stringify({ op: 'snapshot', channel: f.channel, version: 1, epoch: 'e1', data: { stream: 's', totals: { a: 1 } } }))
            if (how === '4003') setTimeout(() => ws.close(4003, 'revoked'), 50)
          }
        },
      })
      const c = keep(createClient({ urls: [s.url] }))
      const sub = c.subscribe('reactions:s')
      await until('live', () => sub.status === 'live', 3000)
      if (how === 'close()') c.close()
      await until('closed', () => c.status.state === 'closed', 3000)
      expect({ how, status: sub.status }).toEqual({ how, status: 'closed' })
      // What it held stays readable: exact as of its version.
      expect(sub.state).toEqual({ stream: 's', totals: { a: 1 } })
    }
  })
})

describe('client timing options', () => {
  /** Accepts the token after 200 ms; answers no ping and no subscribe. */
  const slowAuth = () =>
    scripted({
      noPong: true,
      frame: (ws, f) => {
        if (f.op === 'auth') setTimeout(() => ws.send(JSON.stringify({ op: 'authed', ref: f.ref, principal: 'u:ann', dedupWindowMs: 120_000 })), 200)
      },
    })
  const timeouts = ['connectTimeoutMs', 'pingIntervalMs', 'pongTimeoutMs', 'requestTimeoutMs', 'tokenTimeoutMs'] as const

  for (const option of timeouts) {
    test(`${option}: Infinity means no limit: the client connects once and stays, its timers neither fire at once nor spin`, async () => {
      const s = slowAuth()
      // Counts the client's timers: one given more than 2^31-1 ms fires after 1 ms, and the
      // silence timer re-armed so would spin every millisecond without a visible sign.
      let timers = 0
      const realSetTimeout = globalThis.setTimeout
      globalThis.setTimeout = ((fn: () => void, ms?: number) => (timers++, realSetTimeout(fn, ms))) as typeof setTimeout
      try {
        // Pings every 200 ms unless pingIntervalMs itself is under test: a pong timeout firing at once drops the connection.
        // The token answers after 50 ms: answered at once, it settled before a tokenTimeoutMs timer firing at once could.
        const c = keep(createClient({ urls: [s.url], token: () => Bun.sleep(50).then(() => 't'), pingIntervalMs: 200, [option]: Infinity, backoff: { minMs: 10, maxMs: 10 } }))
        const seen: string[] = []
        c.on('status', (st) => void seen.push(st.state === 'reconnecting' ? `reconnecting: ${st.reason.message}` : st.state))
        c.subscribe('reactions:s')
        await sleep(900)
        expect(seen).toEqual(['connected'])
        expect(s.connections()).toBe(1)
        expect(s.frames.filter((f) => f.op === 'subscribe').length).toBe(1)
        expect(timers).toBeLessThan(30)
      } finally {
        globalThis.setTimeout = realSetTimeout
      }
    })
  }

  test('backoff: Infinity (or anything past 10 minutes) waits at most 10 minutes before a reconnect, not up to the ~24 days a timer holds', async () => {
    const s = scripted({ open: (ws) => ws.close(1011, 'boom') })
    const realRandom = Math.random
    // The top of the jitter: the longest wait the options allow.
    Math.random = () => 1 - 2 ** -40
    try {
      for (const backoff of [{ minMs: Infinity, maxMs: Infinity }, { minMs: 2 ** 40, maxMs: 2 ** 40 }]) {
        const c = keep(createClient({ urls: [s.url], backoff }))
        const waits: number[] = []
        c.on('status', (st) => void (st.state === 'reconnecting' && waits.push(st.delayMs)))
        await until('a reconnect scheduled', () => waits.length > 0, 3000)
        c.close()
        expect([backoff, waits]).toEqual([backoff, [600_000 - 1]])
      }
    } finally {
      Math.random = realRandom
    }
  })

  test('a timing option that is not a positive number (negative, zero, NaN, a string) is refused when the client is made, naming it', () => {
    for (const option of [...timeouts, 'maxServerWaitMs'] as const) {
      for (const bad of [-1, 0, NaN, '5000']) {
        expect(() => createClient({ urls: ['ws://127.0.0.1:9/v1/ws'], [option]: bad as number })).toThrow(`${option} must be a positive number of milliseconds`)
      }
    }
    for (const key of ['minMs', 'maxMs'] as const) {
      expect(() => createClient({ urls: ['ws://127.0.0.1:9/v1/ws'], backoff: { [key]: -5 } })).toThrow(`backoff.${key} must be a positive number of milliseconds (at most 600000, Infinity: that), not -5`)
    }
    let code: string | undefined
    try {
      createClient({ urls: ['ws://127.0.0.1:9/v1/ws'], pongTimeoutMs: NaN })
    } catch (err) {
      code = (err as { code?: string }).code
    }
    expect(code).toBe('invalid_options')
  })
})

describe('client against a server asking for waits longer than maxServerWaitMs', () => {
  test('a 4029 asking for days reconnects after maxServerWaitMs (plus the jitter), not when it says; by default after 5 minutes', async () => {
    let connections = 0
    const s = scripted({ open: (ws) => void (++connections === 1 && ws.close(4029, 'rate_limited: reconnect after 2000000000 ms')) })
    const c = keep(createClient({ urls: [s.url], maxServerWaitMs: 300 }))
    const delays: number[] = []
    c.on('status', (st) => void (st.state === 'reconnecting' && delays.push(st.delayMs)))
    await until('reconnected', () => connections === 2, 3000)
    expect(delays.length).toBe(1)
    expect(delays[0]).toBeGreaterThanOrEqual(300)
    expect(delays[0]).toBeLessThan(1300)

    let first = true
    const d = scripted({ open: (ws) => void (first && ((first = false), ws.close(4029, 'rate_limited: reconnect after 2000000000 ms'))) })
    const byDefault = keep(createClient({ urls: [d.url] }))
    await until('reconnecting', () => byDefault.status.state === 'reconnecting', 3000)
    const st = byDefault.status as Extract<Status, { state: 'reconnecting' }>
    expect(st.delayMs).toBeGreaterThanOrEqual(300_000)
    expect(st.delayMs).toBeLessThan(301_000)
  })

  test('a subscribe refused with a retryAfterMs of days is sent again after maxServerWaitMs', async () => {
    const s = scripted({
      frame: (ws, f) => {
        if (f.op !== 'subscribe') return
        if (s.frames.filter((x) => x.op === 'subscribe').length === 1) {
          ws.send(JSON.stringify({ op: 'error', ref: f.ref, channel: f.channel, error: { code: 'rate_limited', message: 'slow down', retryAfterMs: 2_000_000_000 } }))
        } else {
          ws.send(JSON.stringify({ op: 'snapshot', channel: f.channel, version: 1, epoch: 'e1', data: { stream: 's', totals: { a: 1 } } }))
        }
      },
    })
    const c = keep(createClient({ urls: [s.url], maxServerWaitMs: 300 }))
    c.on('error', () => {})
    const sub = c.subscribe('reactions:s')
    await until('live', () => sub.status === 'live', 3000)
    expect(s.frames.filter((f) => f.op === 'subscribe').length).toBe(2)
  })

  test('a publish refused with a retryAfterMs of days is sent again (same id) after maxServerWaitMs, and acknowledged', async () => {
    const s = scripted({
      frame: (ws, f) => {
        if (f.op !== 'publish') return
        if (s.frames.filter((x) => x.op === 'publish').length === 1) {
          ws.send(JSON.stringify({ op: 'error', ref: f.ref, error: { code: 'rate_limited', message: 'slow down', retryAfterMs: 2_000_000_000 } }))
        } else {
          ws.send(JSON.stringify({ op: 'ack', ref: f.ref, id: f.event.id, seq: 1, duplicate: false }))
        }
      },
    })
    const c = keep(createClient({ urls: [s.url], maxServerWaitMs: 300 }))
    const ack = await Promise.race([c.publish({ type: 'chat.message.posted', data: { room: 'lobby', user: 'ann', text: 'hi' } }), sleep(3000).then(() => 'still parked')])
    expect(ack).toMatchObject({ seq: 1, duplicate: false })
    const ids = s.frames.filter((f) => f.op === 'publish').map((f) => f.event.id)
    expect(ids.length).toBe(2)
    expect(ids[1]).toBe(ids[0])
  })
})

describe('client told already_subscribed', () => {
  test('the channel is ended and subscribed again at once (not left pending until the request timeout replaces the connection), and is live only on the fresh snapshot', async () => {
    let subscribes = 0
    const s = scripted({
      frame: (ws, f) => {
        if (f.op === 'subscribe') {
          // The socket's own subscription, from an unknown point: its update must not be applied.
          if (++subscribes === 1) {
            ws.send(JSON.stringify({ op: 'error', ref: f.ref, error: { code: 'already_subscribed', message: `already subscribed to ${f.channel}` } }))
            ws.send(JSON.stringify({ op: 'update', channel: f.channel, version: 7, from: 7, epoch: 'e1', data: { counts: { a: 1 }, totals: { a: 7 } } }))
          } else {
            ws.send(JSON.stringify({ op: 'snapshot', channel: f.channel, version: 9, epoch: 'e1', data: { stream: 's', totals: { a: 9 } } }))
          }
        } else if (f.op === 'unsubscribe') {
          ws.send(JSON.stringify({ op: 'unsubscribed', ref: f.ref, channel: f.channel }))
        }
      },
    })
    const c = keep(createClient({ urls: [s.url], requestTimeoutMs: 5000 }))
    const errors: string[] = []
    c.on('error', (e) => void errors.push(e.code))
    const states: unknown[] = []
    const sub = c.subscribe('reactions:s', { onState: (st) => void states.push(st) })
    await until('live', () => sub.status === 'live', 2000)
    expect(s.frames.filter((f) => f.op !== 'ping').map((f) => f.op)).toEqual(['subscribe', 'unsubscribe', 'subscribe'])
    expect(states).toEqual([{ stream: 's', totals: { a: 9 } }])
    expect([sub.version, s.connections(), errors]).toEqual([9, 1, []])
  })

  test('a server that answers every subscribe so: never shown live, asked again after a backoff, not in a loop', async () => {
    const s = scripted({
      frame: (ws, f) => {
        if (f.op === 'subscribe') ws.send(JSON.stringify({ op: 'error', ref: f.ref, error: { code: 'already_subscribed', message: 'already subscribed' } }))
        else if (f.op === 'unsubscribe') ws.send(JSON.stringify({ op: 'unsubscribed', ref: f.ref, channel: f.channel }))
      },
    })
    const c = keep(createClient({ urls: [s.url], backoff: { minMs: 200, maxMs: 1000 } }))
    const sub = c.subscribe('reactions:s')
    const shown = new Set<string>()
    const seen = setInterval(() => shown.add(sub.status), 5)
    await sleep(1000)
    clearInterval(seen)
    expect(shown.has('live')).toBe(false)
    const subscribes = s.frames.filter((f) => f.op === 'subscribe').length
    expect(subscribes).toBeGreaterThanOrEqual(2)
    expect(subscribes).toBeLessThan(10)
  })
})

describe('client on a poll closing far ahead', () => {
  test('a poll closing in more than a timer holds (~24 days) is not re-shown every millisecond: onState once, until it changes', async () => {
    const closesAt = new Date(Date.now() + 60 * 86_400_000).toISOString()
    const s = scripted({
      frame: (ws, f) => {
        if (f.op !== 'subscribe') return
        const poll = { poll: 'p1', stream: 's', question: 'q', status: 'open', options: [{ text: 'yes', votes: 0 }], ignoredVotes: 0, openedAt: new Date().toISOString(), closesAt }
        ws.send(JSON.stringify({ op: 'snapshot', channel: f.channel, version: 1, epoch: 'e1', data: poll }))
      },
    })
    const c = keep(createClient({ urls: [s.url] }))
    let shown = 0
    const sub = c.subscribe('poll:p1', { onState: () => void shown++ })
    await until('live', () => sub.status === 'live', 3000)
    await sleep(300)
    expect(shown).toBe(1)
    expect(sub.state).toMatchObject({ status: 'open', closesAt })
  })
})
