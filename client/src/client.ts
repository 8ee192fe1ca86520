import { fullJitter, MAX_BACKOFF_MS, MAX_TIMER_MS, timingOption, waitFromReason } from './backoff'
import { createChannels, type SubscribeOptions, type Subscription } from './channels'
import { FanfareError } from './errors'
import { eventIds } from './ids'
import { createOutbox, type Ack } from './outbox'
import type { PublishedEvent, ServerFrame } from './protocol'

/** Where a client is. `closed` is final: a new client is needed (after `close()`, a revoked credential, a sign-out). */
export type Status =
  | { state: 'connecting'; url: string; attempt: number }
  | { state: 'connected'; url: string; principal?: string }
  | { state: 'reconnecting'; attempt: number; delayMs: number; reason: CloseReason }
  | { state: 'closed'; reason: CloseReason }

/** Why a connection ended: the WebSocket close code and reason, or the SDK's own (code 0). */
export type CloseReason = { code: number; message: string }

/**
 * A user token (JWT from the game's own auth) or an API key. A function is called whenever a
 * token is needed (connecting, `token_expiring`, a 4001 close); one call at a time. Return
 * null/undefined when the user signed out: the client closes instead of retrying forever. A
 * function that throws, or does not answer within `tokenTimeoutMs`, is reported (`token_refresh_failed`,
 * `token_timeout`) and retried with backoff (the token service may be down for a moment); what a
 * call that timed out answers later is ignored. `signal` is aborted when the SDK gives a call up
 * (timed out, or the client closed): pass it to `fetch` so the request is dropped too.
 */
export type TokenSource = string | ((opts: { signal: AbortSignal }) => Promise<string | null | undefined>)

/**
 * Every option in milliseconds follows one rule: a positive number, `Infinity` meaning no limit
 * (the longest delay a timer holds, 2^31-1 ms; for `backoff`'s, the longest backoff, 10 minutes);
 * anything else makes `createClient` throw `invalid_options`.
 */
export type ClientOptions = {
  /** Servers to connect to, in any order: `ws(s)://host/v1/ws`, or `http(s)://host` (the SDK adds `/v1/ws`). */
  urls: string[]
  /** Without one the client is an anonymous viewer (read-only, where the server allows it). */
  token?: TokenSource
  /** The WebSocket class (default: the global one: browsers, Bun, Node 22). */
  WebSocket?: typeof WebSocket
  /**
   * Reconnect waits: full jitter between 0 and min(maxMs, minMs * 2^attempt). Default 250 ms .. 30 s.
   * Each at most 10 minutes (MAX_BACKOFF_MS): a longer one, `Infinity` included, is that.
   */
  backoff?: { minMs?: number; maxMs?: number }
  /** A connection silent this long is asked for a pong (default 25 s)... */
  pingIntervalMs?: number
  /** ...and dropped when none comes this long after (default 10 s). */
  pongTimeoutMs?: number
  /** A connection not open and authenticated this long after it started is given up (default 10 s). */
  connectTimeoutMs?: number
  /**
   * A token function that has not answered this long (default 10 s) is given up: `token_timeout`
   * on the `error` event, a reconnect after the backoff with a new call; its late answer is ignored.
   */
  tokenTimeoutMs?: number
  /**
   * A subscribe, a re-sync's unsubscribe or a publish unanswered this long (default 10 s) means
   * the server is stuck on it: the connection is replaced, and everything resumes on the next one
   * (publishes resent with their ids). Checked at the liveness timer's pace: up to half of the
   * shortest of this, `pingIntervalMs` and `pongTimeoutMs` later.
   */
  requestTimeoutMs?: number
  /**
   * The longest wait the server may ask for that is followed as asked (default 5 minutes): a 4029
   * close's `reconnect after N ms`, a refusal's `retryAfterMs` (subscribes, publishes). A longer one
   * is cut to it: a buggy or hostile server cannot park the reconnect, a channel or the publishes
   * for days; one that still refuses says so again when asked.
   */
  maxServerWaitMs?: number
  /** Publishes waiting at most (default 1000), and in flight at most (default 32). */
  outbox?: { max?: number; window?: number }
  /** The clock (tests). */
  now?: () => number
}

/** A call of the token function under way. */
type TokenCall = { promise: Promise<string | undefined>; timer: ReturnType<typeof setTimeout>; abandon: (err: FanfareError) => void }

/** A `warning` frame's body: nothing was refused, but the server says a limit is near (see README "Limits"). */
export type Warning = Extract<ServerFrame, { op: 'warning' }>['warning']

type Listeners = { status: Set<(s: Status) => void>; error: Set<(e: FanfareError) => void>; warning: Set<(w: Warning) => void> }

/** A connection that lived this long counts as healthy: the next reconnect starts the backoff over. */
const HEALTHY_MS = 10_000
/** A token this close to its expiry is refreshed before connecting with it. */
const EXPIRY_SKEW_MS = 5_000
/** The longest wait the server may ask for (a 4029, a `retryAfterMs`) that is followed as asked. */
const DEFAULT_MAX_SERVER_WAIT_MS = 300_000
/** The server's default de-duplication window, until `authed` tells this server's. */
const DEFAULT_DEDUP_WINDOW_MS = 120_000

/**
 * A Fanfare client: one WebSocket to one of `urls` at a time, replaced whenever it drops. Channels
 * resume where they were (since + epoch) on whichever node the next connection reaches, and
 * publishes wait in an outbox until acknowledged, each with the id it got once.
 *
 * Close codes: 4001 (token expired) fetches a token and reconnects; 4003 (forbidden, revoked) and
 * a sign-out close the client for good; 4029 waits as the server says (up to maxServerWaitMs); 1001 (a node shutting
 * down) and 4008 (slow consumer) reconnect at once, elsewhere; anything else backs off.
 */
export function createClient(options: ClientOptions) {
  if (options.urls.length === 0) throw new FanfareError('invalid_options', 'createClient needs at least one URL')
  const urls = options.urls.map(wsUrl)
  const Socket = options.WebSocket ?? globalThis.WebSocket
  if (!Socket) throw new FanfareError('invalid_options', 'no WebSocket class: pass options.WebSocket (Node before 22 has none)')
  const now = options.now ?? Date.now
  // Every timing option by one rule (see timingOption): Infinity is no limit, a bad value is refused here.
  // A backoff's waits stop at MAX_BACKOFF_MS (10 minutes), Infinity included.
  const backoff = {
    minMs: timingOption('backoff.minMs', options.backoff?.minMs, 250, MAX_BACKOFF_MS),
    maxMs: timingOption('backoff.maxMs', options.backoff?.maxMs, 30_000, MAX_BACKOFF_MS),
  }
  const pingIntervalMs = timingOption('pingIntervalMs', options.pingIntervalMs, 25_000)
  const pongTimeoutMs = timingOption('pongTimeoutMs', options.pongTimeoutMs, 10_000)
  const connectTimeoutMs = timingOption('connectTimeoutMs', options.connectTimeoutMs, 10_000)
  const tokenTimeoutMs = timingOption('tokenTimeoutMs', options.tokenTimeoutMs, 10_000)
  const requestTimeoutMs = timingOption('requestTimeoutMs', options.requestTimeoutMs, 10_000)
  const maxServerWaitMs = timingOption('maxServerWaitMs', options.maxServerWaitMs, DEFAULT_MAX_SERVER_WAIT_MS)
  const listeners: Listeners = { status: new Set(), error: new Set(), warning: new Set() }
  const nextId = eventIds()

  let status: Status = { state: 'connecting', url: urls[0], attempt: 0 }
  let socket: WebSocket | undefined
  let urlIndex = Math.floor(Math.random() * urls.length)
  let attempt = 0
  let connectedAt = 0
  let lastFrameAt = 0
  let pingSentAt: number | undefined
  let closed = false
  let reconnectTimer: ReturnType<typeof setTimeout> | undefined
  let pingTimer: ReturnType<typeof setInterval> | undefined
  // The liveness interval checks at its own pace; these two fire on time: at pingIntervalMs of
  // silence, and pongTimeoutMs after a ping.
  let silenceTimer: ReturnType<typeof setTimeout> | undefined
  let pongTimer: ReturnType<typeof setTimeout> | undefined
  let connectTimer: ReturnType<typeof setTimeout> | undefined
  let dedupWindowMs = DEFAULT_DEDUP_WINDOW_MS
  // The token in use and when the server said it expires; a call of the token function in flight is shared.
  let token: string | undefined = typeof options.token === 'string' ? options.token : undefined
  let tokenExpiresAt: number | undefined
  let tokenCall: TokenCall | undefined
  // The expiry a renewal was asked for: a token_expiring repeated for it (a buggy or hostile
  // server) must not call the token function, the game's auth service, once per frame.
  let renewedFor: string | undefined

  /**
   * Tells the status listeners; false when one of them closed the client meanwhile: the caller
   * then stops there (a timer or socket started after the close would outlive it).
   */
  const setStatus = (s: Status): boolean => {
    status = s
    for (const fn of [...listeners.status]) {
      // A listener's own bug must not stop the client: thrown out of a status change, it left the
      // client connecting or reconnecting for good, or connected with its channels never subscribed.
      try {
        fn(s)
      } catch (err) {
        report(new FanfareError('listener_error', `a status listener threw: ${(err as Error)?.message ?? err}`))
      }
    }
    return !closed
  }
  const report = (err: FanfareError) => {
    for (const fn of [...listeners.error]) {
      try {
        fn(err)
      } catch {
        // Nowhere left to report it.
      }
    }
  }
  const send = (frame: object) => {
    if (!socket || socket.readyState !== 1) return false
    socket.send(JSON.stringify(frame))
    return true
  }
  const retryWait = (n: number) => fullJitter(n, backoff)

  const channels = createChannels({ send, now, backoff: retryWait, report, maxServerWaitMs })
  const outbox = createOutbox({
    max: options.outbox?.max ?? 1000,
    window: options.outbox?.window ?? 32,
    send,
    now,
    dedupWindowMs: () => dedupWindowMs,
    backoff: retryWait,
    maxServerWaitMs,
  })

  /**
   * A fresh token from the token function (one call at a time: a second caller shares it);
   * undefined when the user signed out. Throws what the function threw, or `token_timeout` when
   * it has not answered within tokenTimeoutMs: that call is given up, and whatever it answers
   * later is ignored (it neither becomes the token nor ends the call made after it).
   */
  const refreshToken = (): Promise<string | undefined> => {
    if (typeof options.token !== 'function') return Promise.resolve(token)
    if (tokenCall) return tokenCall.promise
    const fn = options.token
    const call = {} as TokenCall
    call.promise = new Promise<string | undefined>((resolve, reject) => {
      // The first of the answer, the timeout and the client closing settles the call.
      const end = (settle: () => void) => {
        if (tokenCall !== call) return
        tokenCall = undefined
        clearTimeout(call.timer)
        settle()
      }
      const aborted = new AbortController()
      const giveUp = (err: FanfareError) =>
        end(() => {
          aborted.abort(err)
          reject(err)
        })
      call.abandon = giveUp
      call.timer = setTimeout(() => giveUp(new FanfareError('token_timeout', `the token function did not answer within ${tokenTimeoutMs} ms`)), tokenTimeoutMs)
      Promise.resolve()
        .then(() => fn({ signal: aborted.signal }))
        .then(
          (fresh) =>
            end(() => {
              token = fresh ?? undefined
              tokenExpiresAt = undefined
              resolve(token)
            }),
          (err) => end(() => reject(err)),
        )
    })
    tokenCall = call
    return call.promise
  }
  /** What a failed token call is reported as: its timeout, or what the function threw. */
  const tokenError = (err: unknown) =>
    err instanceof FanfareError && err.code === 'token_timeout' ? err : new FanfareError('token_refresh_failed', `the token function failed: ${(err as Error)?.message ?? err}`)

  /** Ends the client for good. */
  const finish = (reason: CloseReason) => {
    if (closed) return
    closed = true
    clearTimers()
    tokenCall?.abandon(new FanfareError('closed', 'the client is closed'))
    events.removeEventListener?.('online', wake)
    events.removeEventListener?.('visibilitychange', onVisible)
    const s = socket
    socket = undefined
    if (s) detach(s)
    if (s && s.readyState <= 1) s.close(1000, 'client closed')
    const err = new FanfareError('closed', `the client is closed: ${reason.message}`)
    outbox.close(err)
    channels.close()
    setStatus({ state: 'closed', reason })
  }

  const clearTimers = () => {
    if (reconnectTimer !== undefined) clearTimeout(reconnectTimer)
    if (pingTimer !== undefined) clearInterval(pingTimer)
    if (connectTimer !== undefined) clearTimeout(connectTimer)
    if (silenceTimer !== undefined) clearTimeout(silenceTimer)
    if (pongTimer !== undefined) clearTimeout(pongTimer)
    reconnectTimer = pingTimer = connectTimer = silenceTimer = pongTimer = undefined
  }
  const detach = (s: WebSocket) => {
    s.onopen = s.onmessage = s.onclose = s.onerror = null
  }

  /** The connection is gone (closed, or found dead): decide between waiting, reconnecting and finishing. */
  const lost = (reason: CloseReason, stuck = false) => {
    if (closed) return
    const s = socket
    socket = undefined
    if (s) {
      detach(s)
      // A socket found dead may never finish its closing handshake: do not wait for it.
      if (s.readyState <= 1) s.close(4000, 'client reconnecting')
    }
    clearTimers()
    channels.offline()
    outbox.offline()
    // A server stuck on a request is not healthy however long the connection lived: a node that
    // never answers one channel's subscribe gets reconnects that back off, not one every timeout.
    if (!stuck && connectedAt > 0 && now() - connectedAt >= HEALTHY_MS) attempt = 0
    connectedAt = 0
    let delay: number
    switch (reason.code) {
      case 4003:
        return finish(reason)
      case 4001:
        if (typeof options.token !== 'function') return finish(reason)
        token = undefined
        // A token function handing out expired tokens must not make a tight loop: back off after the first.
        delay = attempt === 0 ? 0 : retryWait(attempt)
        break
      case 4029:
        delay = Math.min(MAX_TIMER_MS, (waitFromReason(reason.message, maxServerWaitMs) ?? retryWait(attempt)) + fullJitter(0, { minMs: 1000, maxMs: 1000 }))
        break
      case 1001:
      case 4008:
        delay = attempt === 0 ? 0 : retryWait(attempt)
        break
      default:
        delay = retryWait(attempt)
    }
    attempt++
    urlIndex = (urlIndex + 1) % urls.length
    if (!setStatus({ state: 'reconnecting', attempt, delayMs: delay, reason })) return
    reconnectTimer = setTimeout(() => void connect(), delay)
  }

  const connect = async () => {
    reconnectTimer = undefined
    if (closed) return
    const url = urls[urlIndex]
    // A socket opened after a status listener closed the client would bring it back.
    if (!setStatus({ state: 'connecting', url, attempt })) return
    let credential: string | undefined
    if (options.token !== undefined) {
      try {
        const stale = token === undefined || (tokenExpiresAt !== undefined && tokenExpiresAt - EXPIRY_SKEW_MS <= now())
        credential = stale ? await refreshToken() : token
      } catch (err) {
        if (closed) return
        // Said plainly (a status alone reads like any network fault), then retried after the backoff.
        const e = tokenError(err)
        report(e)
        return lost({ code: 0, message: e.message })
      }
      if (closed) return
      if (credential === undefined) return finish({ code: 0, message: 'signed out: the token function returned no token' })
    }
    let s: WebSocket
    try {
      s = new Socket(url)
    } catch (err) {
      // A browser refusing the URL (ws:// from an https page, a blocked port) throws here: out of
      // this async function that left the client connecting for good.
      return lost({ code: 0, message: `the WebSocket could not be created: ${(err as Error)?.message ?? err}` })
    }
    socket = s
    // A server that never answers (a black-holed address) would leave the socket opening for minutes.
    connectTimer = setTimeout(() => lost({ code: 0, message: `not connected within ${connectTimeoutMs} ms` }), connectTimeoutMs)
    s.onopen = () => {
      lastFrameAt = now()
      startPings()
      // The token goes in the first frame, never in the URL (URLs end up in logs).
      if (credential !== undefined) send({ op: 'auth', ref: 'auth', token: credential })
      else ready(url, undefined)
    }
    s.onmessage = (ev) => onFrame(url, ev.data)
    s.onclose = (ev) => lost({ code: ev.code, message: ev.reason })
    // An error is followed by a close: that is where it is handled.
    s.onerror = () => {}
  }

  /** Authenticated (or anonymous): channels resume and publishes go out. */
  const ready = (url: string, principal: string | undefined) => {
    if (connectTimer !== undefined) clearTimeout(connectTimer)
    connectTimer = undefined
    connectedAt = now()
    if (!setStatus({ state: 'connected', url, ...(principal !== undefined ? { principal } : {}) })) return
    channels.online()
    outbox.online()
  }

  const onFrame = (url: string, raw: unknown) => {
    lastFrameAt = now()
    pingSentAt = undefined
    let frame: ServerFrame
    try {
      frame = JSON.parse(String(raw)) as ServerFrame
    } catch {
      return report(new FanfareError('bad_frame', 'the server sent a frame that is not JSON'))
    }
    if (!isFrame(frame)) return report(new FanfareError('bad_frame', 'the server sent a frame that is not an object with an op (or an error frame without its error)'))
    // Whatever a server sends, nothing throws out of the socket's handler (in Node that ends the process).
    try {
      dispatch(url, frame)
    } catch (err) {
      report(new FanfareError('bad_frame', `the server sent a ${frame.op} frame the client could not handle: ${(err as Error)?.message ?? err}`))
    }
  }

  const dispatch = (url: string, frame: ServerFrame) => {
    switch (frame.op) {
      case 'authed':
        dedupWindowMs = frame.dedupWindowMs ?? dedupWindowMs
        tokenExpiresAt = frame.expiresAt === undefined ? undefined : Date.parse(frame.expiresAt)
        if (status.state !== 'connected') ready(url, frame.principal)
        return
      case 'token_expiring': {
        const about = Date.parse(frame.expiresAt)
        // Repeated, or about a token already replaced by a later one: nothing to do.
        if (frame.expiresAt === renewedFor || (tokenExpiresAt !== undefined && about < tokenExpiresAt)) return
        renewedFor = frame.expiresAt
        return void renew()
      }
      case 'pong':
        return
      case 'warning':
        for (const fn of [...listeners.warning]) {
          try {
            fn(frame.warning)
          } catch (err) {
            report(new FanfareError('listener_error', `a warning listener threw: ${(err as Error)?.message ?? err}`))
          }
        }
        return
      case 'ack':
        if (!outbox.answer(frame)) report(new FanfareError('unexpected_frame', `an ack for ${frame.ref ?? 'no ref'} that nothing waits for`))
        return
      case 'error':
        if (frame.ref === 'auth' || frame.ref === 'renew') {
          // The server closes after a refused token (4001/4003): the close decides what follows.
          return report(new FanfareError(frame.error.code, frame.error.message, frame.error.details))
        }
        if (frame.ref?.startsWith('p') && outbox.answer(frame)) return
        if (channels.handle(frame)) return
        return report(new FanfareError(frame.error.code, frame.error.message, frame.error.details))
      default:
        if (!channels.handle(frame)) report(new FanfareError('unexpected_frame', `unknown frame op ${(frame as { op?: unknown }).op}`))
    }
  }

  /** `token_expiring`: a fresh token on the same connection, before the server closes it. */
  const renew = async () => {
    let fresh: string | undefined
    try {
      fresh = await refreshToken()
    } catch (err) {
      // The server closes with 4001 at expiry; reconnecting fetches a token again then.
      if (closed) return
      return report(tokenError(err))
    }
    if (fresh === undefined) return finish({ code: 0, message: 'signed out: the token function returned no token' })
    send({ op: 'auth', ref: 'renew', token: fresh })
  }

  /** Asks for a pong: unless some frame comes back within pongTimeoutMs, the connection is dropped. */
  const ping = () => {
    const at = (pingSentAt = now())
    send({ op: 'ping', ref: 'ping' })
    if (pongTimer !== undefined) clearTimeout(pongTimer)
    pongTimer = setTimeout(() => {
      pongTimer = undefined
      if (pingSentAt === at) lost({ code: 0, message: `no answer to a ping within ${pongTimeoutMs} ms` })
    }, pongTimeoutMs)
  }

  /**
   * Liveness: a socket silent for pingIntervalMs is pinged, and dropped when nothing comes back
   * within pongTimeoutMs. A timer that fires far too late means the machine slept: ping at once.
   * A server that answers pings but leaves a request unanswered for requestTimeoutMs is stuck on
   * it (its database, its stream): the connection is dropped too, and the next one resumes.
   */
  const startPings = () => {
    if (pingTimer !== undefined) clearInterval(pingTimer)
    // A ping the last connection left unanswered (it was found dead so) is not this one's.
    pingSentAt = undefined
    // Checked at the interval's pace alone (half the shortest timeout: 5 s by default), a ping went
    // up to a check late and its timeout was seen up to another: a dead connection was found up to
    // 45 s after its last frame by default, not the 35 s documented.
    const onSilence = () => {
      silenceTimer = undefined
      if (pingSentAt === undefined && now() - lastFrameAt >= pingIntervalMs) ping()
      silenceTimer = setTimeout(onSilence, pingSentAt !== undefined ? pingIntervalMs : Math.max(1, lastFrameAt + pingIntervalMs - now()))
    }
    if (silenceTimer !== undefined) clearTimeout(silenceTimer)
    silenceTimer = setTimeout(onSilence, pingIntervalMs)
    const tick = Math.max(100, Math.min(pingIntervalMs, pongTimeoutMs, requestTimeoutMs) / 2)
    let lastTick = now()
    pingTimer = setInterval(() => {
      const t = now()
      const slept = t - lastTick > tick * 3
      lastTick = t
      const asked = Math.min(channels.oldestUnanswered() ?? Infinity, outbox.oldestUnanswered() ?? Infinity)
      if (status.state === 'connected' && t - asked >= requestTimeoutMs) {
        return lost({ code: 0, message: `a request went unanswered for ${requestTimeoutMs} ms` }, true)
      }
      if (pingSentAt !== undefined) {
        if (t - pingSentAt >= pongTimeoutMs) lost({ code: 0, message: `no answer to a ping within ${pongTimeoutMs} ms` })
        return
      }
      if (slept || t - lastFrameAt >= pingIntervalMs) ping()
    }, tick)
  }

  // Browsers say when the network is back, or the page is looked at again (after a sleep): check
  // the connection at once instead of at the next ping or backoff.
  const wake = () => {
    if (closed) return
    if (status.state === 'reconnecting' && reconnectTimer !== undefined) {
      clearTimeout(reconnectTimer)
      void connect()
    } else if (status.state === 'connected' && pingSentAt === undefined) {
      ping()
    }
  }
  const onVisible = () => {
    if ((globalThis as { document?: { visibilityState?: string } }).document?.visibilityState === 'visible') wake()
  }
  const events = globalThis as unknown as { addEventListener?: (t: string, f: () => void) => void; removeEventListener?: (t: string, f: () => void) => void }
  events.addEventListener?.('online', wake)
  events.addEventListener?.('visibilitychange', onVisible)

  void connect()

  return {
    /** Where the client is now (see the `status` event). */
    get status(): Status {
      return status
    },

    /**
     * Follows a channel: `onState` gets its state now and after every change, which equals what
     * the server would snapshot at that moment. Across reconnects the channel resumes where it
     * was; if it cannot, the state is replaced by a snapshot and `onResync` says so.
     */
    subscribe<C extends string>(channel: C, opts: SubscribeOptions<C> = {}): Subscription<C> {
      if (closed) throw new FanfareError('closed', 'the client is closed')
      return channels.add(channel, opts)
    },

    /**
     * Publishes an event, resolving once the server stored it. The event gets an id now (unless it
     * has one) and keeps it through every resend, so it is stored once however often the
     * connection drops. Rejects with `outbox_full`, `unconfirmed`, `closed`, or the server's
     * refusal (`invalid_event`, `forbidden`, ...). Events are sent in the order published.
     */
    publish(event: PublishedEvent): Promise<Ack> {
      if (closed) return Promise.reject(new FanfareError('closed', 'the client is closed'))
      return outbox.publish({ ...event, id: event.id ?? nextId() } as PublishedEvent & { id: string })
    },

    /** Publishes waiting for their ack. */
    get pending(): number {
      return outbox.size
    },

    /**
     * Status changes; problems that are no single call's (a gap repaired, a channel's transient
     * fault, a listener that threw); warnings (a rate budget nearly spent: slow down before refusals).
     */
    on<E extends keyof Listeners>(event: E, fn: Listeners[E] extends Set<infer F> ? F : never): () => void {
      const set = listeners[event] as Set<unknown>
      set.add(fn)
      return () => void set.delete(fn)
    },

    /** Closes the connection for good; publishes still waiting fail with `closed`. */
    close() {
      finish({ code: 1000, message: 'closed by the client' })
    },
  }
}

export type Client = ReturnType<typeof createClient>

/** The least a frame must be for its handlers to read it: an object with an op, and an error frame's `error`. */
function isFrame(frame: unknown): frame is ServerFrame {
  if (typeof frame !== 'object' || frame === null || Array.isArray(frame)) return false
  const f = frame as { op?: unknown; error?: unknown }
  if (typeof f.op !== 'string') return false
  return f.op !== 'error' || (typeof f.error === 'object' && f.error !== null && typeof (f.error as { code?: unknown }).code === 'string')
}

/** `http(s)://host` becomes `ws(s)://host/v1/ws`; WebSocket URLs are kept (a proxy may serve it on another path). */
export function wsUrl(url: string): string {
  const u = new URL(url)
  if (u.protocol === 'http:' || u.protocol === 'https:') {
    u.protocol = u.protocol === 'http:' ? 'ws:' : 'wss:'
    if (u.pathname === '/' || u.pathname === '') u.pathname = '/v1/ws'
  }
  return u.toString()
}
