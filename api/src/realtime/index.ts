import type { ServerWebSocket } from 'bun'
import { Elysia, t } from 'elysia'
import { channelOf, parseChannel, presenceTarget } from '../../../core/channels'
import type { Config } from '../../../core/config'
import type { EventInput } from '../../../core/events'
import { dbErrorSummary } from '../../../core/db/errors'
import type { Logger } from '../../../core/logger'
import type { Metrics } from '../../../core/metrics'
import { commandSpan, contextOfTraceparent } from '../../../core/tracing'
import type { PublishOptions } from '../modules/events/service'
import type { Authenticator } from '../auth/authenticate'
import { ErrorResponse } from '../error-model'
import { bearerOf } from '../auth/plugin'
import { maySubscribe } from '../auth/permissions'
import { ANONYMOUS, principalId, type Principal } from '../auth/principal'
import { revokedUser, type Revocations } from '../auth/revocations'
import type { RoomAccess } from '../auth/rooms'
import { AppError, Forbidden, Invalid, RateLimited, retryAfterSeconds, Revoked, TokenExpired, Unauthorized, Unavailable } from '../errors'
import { checkCredential, closeReasonOf, refuseUpgrade, type ConnectionRates, type ConnectionRefusal, type Limits, type RateRefusal, type Slot } from '../limits'
import { heldBack, holdAfterUnavailable, type PublishHold } from '../limits/publish-order'
import type { Presence } from '../presence'
import { isTracked, presenceChannelOf } from '../presence/feed'
import type { ChannelHub, Sink } from './channel-hub'
import { CLOSE } from './close-codes'
import { createLiveness, type Listened } from './liveness'
import { errorBody, parseFrame, type ServerFrame } from './protocol'

/** What the WebSocket route needs: the hub for channels, the ingest path, and who is calling. */
export type RealtimeDeps = {
  config: Pick<Config, 'FANFARE_ANONYMOUS' | 'FANFARE_TOKEN_WARNING_MS' | 'FANFARE_AUTH_TIMEOUT_MS' | 'FANFARE_WS_ABUSE_WINDOW_MS' | 'FANFARE_DEDUP_WINDOW_MS' | 'FANFARE_WS_IDLE_TIMEOUT_S'>
  hub: ChannelHub
  /** Who is in tracked channels, and the `presence:<channel>` subscriptions. */
  presence: Presence
  publish: (events: EventInput[], principal: Principal, opts?: PublishOptions) => Promise<{ id: string; seq: number; duplicate: boolean }[]>
  /** The process's metrics (frames sent, disconnects, connection and subscription counts). */
  metrics: Metrics
  authenticator: Authenticator
  revocations: Pick<Revocations, 'onChange'>
  rooms: RoomAccess
  logger: Logger
  /** Rate and connection limits (and most channels one connection may watch). */
  limits: Limits
  /** Open sockets of this node, kept so shutdown can close them with "going away". */
  sockets?: SocketRegistry
  now?: () => number
}

/** What the node needs of an open socket: Bun's ServerWebSocket (Elysia's `ws.raw`). */
export type OpenSocket = {
  close: (code: number, reason: string) => void
  getBufferedAmount: () => number
  readyState: number
  send: (text: string) => number
  isSubscribed: (topic: string) => boolean
}

/** The open WebSockets of one node. */
export type SocketRegistry = {
  open: Map<string, OpenSocket>
  /** Set once the node is shutting down: new sockets are closed at once. */
  closing: boolean
  /**
   * Set by the routes: closes every open socket with 1001 "going away" once the acks of its
   * publishes in flight are sent (frames after it are ignored), so a shutdown answers what it took.
   */
  goAway?: () => void
  /** Told the result of every direct send to a socket (-1: queued under backpressure, 0: dropped). */
  sent: (ws: OpenSocket, result: number) => void
}

/**
 * One socket's state. It is also the socket's `ws.data` (Elysia's server-wide WebSocket handlers
 * call `ws.data.open/message/close`) and its hub `Sink`: one object per socket, its methods shared
 * (see realtimeRoutes). Idle sockets are most of a node's sockets: what one holds is its memory.
 */
type Connection = Sink &
  Listened & {
  principal: Principal
  /** Opened without a token while anonymous clients are refused: only `auth` is accepted. */
  awaitingAuth: boolean
  channels: Set<string>
  /** Bun's socket, from `open` on. */
  socket: ServerWebSocket<Connection>
  /** Publish acks waiting for the end of the event-loop turn (see ackLater); undefined when none. */
  acks: string[] | undefined
  /** This socket's rate limits (publishes, subscribes, abuse), made at its first command that needs them. */
  rates: ConnectionRates
  /** Set while its publishes wait behind one refused for its rate or answered 503 (see heldBack). */
  hold: PublishHold | undefined
  /** Publish frames taken so far: a frame's place, for `hold`. */
  publishes: number
  /** Its place in the connection counts of its address and user. */
  slot: Slot
  address: string
  /** Publishes sent to JetStream and not yet answered: a close for abuse waits for their acks. */
  inFlight: number
  /** Set once the socket is to be closed (for abuse, or the node going away): further frames are ignored. */
  closing?: { code: number; reason: string }
  /** The next of: the `token_expiring` warning, the expiry close, the deadline for a first `auth` frame. */
  timer: ReturnType<typeof setTimeout> | undefined
}

/** How long a client waits before sending again a credential that could not be checked (a 503's Retry-After). */
const RETRY_CREDENTIAL_MS = 1000

/** The longest delay setTimeout holds (2^31 - 1 ms, ~24.8 days). */
const MAX_TIMER_MS = 2 ** 31 - 1

/** The reason of the 1001 close a shutting-down node sends. */
export const GOING_AWAY_REASON = 'server shutting down'

/** The close code for a credential that can no longer be used. */
const closeCodeOf = (err: Unauthorized) => (err instanceof TokenExpired ? CLOSE.TOKEN_EXPIRED : CLOSE.FORBIDDEN)

/**
 * `GET /v1/ws`: JSON text frames. `auth` gives (or refreshes) a user token, `publish` appends an
 * event (what the principal may publish), `subscribe` sends a snapshot and then every update of a
 * channel it may see, in version order, `unsubscribe` stops it. A bad frame gets an `error` frame;
 * the connection stays usable. A credential that stops being valid (expired, revoked) closes the
 * socket with 4001 or 4003; a room made private drops who may no longer see it, with an error frame.
 */
export function realtimeRoutes(deps: RealtimeDeps) {
  const connections = new Map<string, Connection>()
  const maxSubscriptions = deps.limits.maxSubscriptions
  const now = deps.now ?? Date.now
  const log = deps.logger.child({ component: 'realtime' })

  // Every direct send reports its result, so that a socket falling behind is seen (SocketRegistry).
  const sent = (raw: unknown, result: number) => {
    deps.sockets?.sent(raw as OpenSocket, result)
    return result
  }
  const send = (conn: Connection, frame: ServerFrame) => conn.send(JSON.stringify(frame))
  // Read when scraped: nothing is counted per subscribe.
  deps.metrics.ws.watch({
    connections: () => connections.size,
    subscriptions: () => {
      let n = 0
      for (const c of connections.values()) n += c.channels.size
      return n
    },
    channels: () => deps.hub.stats().filter((s) => s.subscribers > 0).length,
  })
  // Acks complete together (one JetStream reply read acknowledges many publishes), outside Bun's
  // own corking of the message handler: each send would be a socket write. They are queued per
  // socket and sent at the end of the turn in one corked write.
  const acking = new Set<Connection>()
  const flushAcks = () => {
    for (const conn of acking) {
      const frames = conn.acks ?? []
      const raw = conn.socket
      conn.acks = undefined
      if (raw.readyState === 1) raw.cork(() => frames.forEach((f) => sent(raw, raw.send(f))))
      deps.metrics.ws.sentOp('ack', frames.length)
    }
    acking.clear()
  }
  const ackLater = (conn: Connection, frame: ServerFrame) => {
    ;(conn.acks ??= []).push(JSON.stringify(frame))
    if (acking.size === 0) setImmediate(flushAcks)
    acking.add(conn)
  }

  const close = (conn: Connection, code: number, reason: string) => {
    clearTimeout(conn.timer)
    conn.timer = undefined
    conn.socket.close(code, reason)
  }

  /**
   * Answers a command refused by a rate limit (nothing was done: send it again after the wait).
   * A socket that keeps going well past its limits is closed with 4029 once the acks of what it
   * had published are sent (none of its accepted events goes unacknowledged), and its principal
   * (or, anonymous, its address) is held off for the delay the close reason gives.
   */
  const rateLimited = (conn: Connection, ref: string | undefined, r: RateRefusal) => {
    // The budget's rate too: commands refused together go again one refill (1000 / perSecond ms)
    // apart, where the wait alone (the time to its next token) may be a millisecond.
    send(conn, { op: 'error', ref, error: { code: r.code, message: r.message, retryAfterMs: r.retryAfterMs, details: { retryAfterMs: r.retryAfterMs, perSecond: r.perSecond } } })
    if (!conn.rates.abusive(r)) return
    const delay = Math.max(deps.config.FANFARE_WS_ABUSE_WINDOW_MS, r.retryAfterMs)
    deps.limits.connections.holdOff(conn.address, conn.principal, delay)
    conn.closing = { code: CLOSE.RATE_LIMITED, reason: closeReasonOf({ code: 'rate_limited', retryAfterMs: delay }) }
    closeWhenAcked(conn)
  }
  /** The ladder's first rung (see RateWarning): after a command that passed, a nearly spent budget is said once. */
  const warnIfNear = (conn: Connection) => {
    const warning = conn.rates.warning(conn.principal)
    if (warning) send(conn, { op: 'warning', warning })
  }
  const closeWhenAcked = (conn: Connection) => {
    // After the acks queued for the end of this turn (ackLater), which were queued first.
    if (conn.closing && conn.inFlight === 0) setImmediate(() => close(conn, conn.closing!.code, conn.closing!.reason))
  }
  // Clients not heard from within the idle timeout are closed, whatever the node sends them (Bun's
  // own timeout restarts at every frame sent): see createLiveness.
  const liveness = createLiveness<Connection>({
    timeoutMs: deps.config.FANFARE_WS_IDLE_TIMEOUT_S * 1000,
    sockets: () => connections,
    // Closed meanwhile (between the sweep's walk and its ping): gone from `connections` already.
    ping: (conn) => void (connections.get(conn.id) === conn && conn.socket.ping()),
    close: (conn) => void (connections.get(conn.id) === conn && close(conn, CLOSE.NO_PONG, 'no pong: reconnect and resume')),
  })
  if (deps.sockets) {
    deps.sockets.goAway = () => {
      for (const conn of connections.values()) {
        conn.closing ??= { code: CLOSE.GOING_AWAY, reason: GOING_AWAY_REASON }
        closeWhenAcked(conn)
      }
    }
  }
  /** A socket past a connection limit: the reason, then 4029 (retry after the delay). */
  const refuseSocket = (conn: Connection, ref: string | undefined, r: ConnectionRefusal) => {
    send(conn, { op: 'error', ref, error: { code: r.code, message: r.message, retryAfterMs: r.retryAfterMs, details: { retryAfterMs: r.retryAfterMs } } })
    close(conn, CLOSE.RATE_LIMITED, closeReasonOf(r))
  }

  /**
   * Warns before a user token expires and closes at expiry; a key with an expiry closes then. One
   * timer per socket, armed for the next of the two (`warned`: the warning for this credential was
   * sent): a socket is an idle connection most of its life, and what it holds is a node's memory.
   */
  const scheduleExpiry = (conn: Connection, warned = false) => {
    clearTimeout(conn.timer)
    conn.timer = undefined
    const p = conn.principal
    if (p.kind === 'anonymous' || p.expiresAt === undefined) return
    const expiresAt = p.expiresAt
    const left = expiresAt - now()
    const warning = p.kind === 'user' && !warned
    const due = Math.max(0, warning ? left - deps.config.FANFARE_TOKEN_WARNING_MS : left)
    // setTimeout holds at most ~24.8 days (a longer delay fires at once): a longer wait is re-armed then.
    if (due > MAX_TIMER_MS) return void (conn.timer = setTimeout(() => scheduleExpiry(conn, warned), MAX_TIMER_MS))
    conn.timer = setTimeout(() => {
      if (warning) {
        send(conn, { op: 'token_expiring', expiresAt: new Date(expiresAt).toISOString() })
        return scheduleExpiry(conn, true)
      }
      const problem = deps.authenticator.check(conn.principal)
      if (problem) close(conn, closeCodeOf(problem), p.kind === 'user' ? 'token_expired' : 'key_expired')
      else scheduleExpiry(conn, true)
    }, due)
  }

  /**
   * Re-checks every open connection's credential (a revocation arrived). A revoked one is closed,
   * and leaves presence at once as `revoked`: no reconnect within the grace is to be waited for.
   */
  const recheckAll = () => {
    for (const conn of connections.values()) {
      const problem = deps.authenticator.check(conn.principal)
      if (problem) {
        send(conn, { op: 'error', error: { code: problem.code, message: problem.message } })
        // Its close (onClose) then finds it untracked already: the grace is not started.
        if (problem instanceof Revoked) for (const channel of conn.channels) if (isTracked(channel)) deps.presence.untrack(channel, conn.id, conn.principal, 'revoked')
        close(conn, closeCodeOf(problem), problem instanceof Revoked ? 'revoked' : problem.code)
      }
    }
  }

  /** A room's visibility changed: drop its subscribers on this node who may no longer see it. */
  const recheckRoom = async (room: string) => {
    const channel = channelOf.chat(room)
    const visibility = await deps.rooms.visibility(room)
    for (const id of deps.hub.members(channel)) {
      const conn = connections.get(id)
      if (!conn) continue
      const access = maySubscribe(conn.principal, channel, visibility)
      if (access.ok) continue
      leaveChannel(conn, channel, 'left')
      send(conn, { op: 'error', channel, error: { code: 'forbidden', message: access.reason } })
      send(conn, { op: 'unsubscribed', channel, reason: 'forbidden' })
    }
    const presence = presenceChannelOf(channel)
    for (const id of [...deps.presence.watchers(channel)]) {
      const conn = connections.get(id)
      if (!conn || maySubscribe(conn.principal, channel, visibility).ok) continue
      leaveChannel(conn, presence, 'left')
      send(conn, { op: 'error', channel: presence, error: { code: 'forbidden', message: `${channel} is private now` } })
      send(conn, { op: 'unsubscribed', channel: presence, reason: 'forbidden' })
    }
  }

  /**
   * A connection's principal was replaced by a fresh token of the same user, whose claims may admit
   * fewer private rooms: drop the channels (and presence channels) it may no longer see, as a room
   * made private does. Permissions are never kept from an earlier token.
   */
  const recheckConnection = async (conn: Connection) => {
    for (const channel of [...conn.channels]) {
      const target = presenceTarget(channel) ?? channel
      const parsed = parseChannel(target)
      const visibility = parsed?.kind === 'chat' ? await deps.rooms.visibility(parsed.name) : 'public'
      if (!conn.channels.has(channel) || connections.get(conn.id) !== conn) continue // left or closed meanwhile
      const access = maySubscribe(conn.principal, target, visibility)
      if (access.ok) continue
      leaveChannel(conn, channel, 'left')
      send(conn, { op: 'error', channel, error: { code: 'forbidden', message: access.reason } })
      send(conn, { op: 'unsubscribed', channel, reason: 'forbidden' })
    }
  }

  /**
   * Takes a connection off one of its channels (a read model's, or a presence channel), and out
   * of the channel's presence: at once when it `left`, after the grace when it `disconnected`.
   * False when it was not subscribed.
   */
  const leaveChannel = (conn: Connection, channel: string, reason: 'left' | 'disconnected'): boolean => {
    conn.channels.delete(channel)
    const target = presenceTarget(channel)
    if (target !== undefined) return deps.presence.unsubscribe(conn, target)
    // A closed socket has no topics left to leave: the hub only forgets it.
    const was = reason === 'disconnected' ? (deps.hub.removeSink(conn, [channel]), true) : deps.hub.unsubscribe(conn, channel)
    if (isTracked(channel)) deps.presence.untrack(channel, conn.id, conn.principal, reason)
    return was
  }

  /** Whether `p` may subscribe to `channel` now; throws Forbidden (with the channel) if not. */
  const checkAccess = async (p: Principal, channel: string) => {
    const parsed = parseChannel(channel)
    const visibility = parsed?.kind === 'chat' ? await deps.rooms.visibility(parsed.name) : 'public'
    const access = maySubscribe(p, channel, visibility)
    if (!access.ok) throw new Forbidden(access.reason, { channel })
  }

  // A revoked user lingering on this node (their socket closed within the presence grace) has no
  // reconnect to wait for either: they leave now as `revoked` (so a match seat goes at once).
  deps.revocations.onChange((r) => {
    recheckAll()
    const user = r && revokedUser(r)
    if (user !== undefined) deps.presence.revoked(user)
  })
  deps.rooms.onChange((room) => void recheckRoom(room).catch((err) => log.warn({ err, room }, 're-checking a room after a visibility change failed')))

  /** Takes a credential from an `auth` frame: a first identity, or a fresh token of the same one. */
  const authenticate = async (conn: Connection, token: string): Promise<Principal> => {
    const p = await checkCredential(deps.limits.authFailures, conn.address, () => deps.authenticator.authenticate(token))
    const was = conn.principal
    if (p.kind === 'anonymous') throw new Unauthorized('an auth frame needs a token')
    if (was.kind !== 'anonymous' && principalId(was) !== principalId(p)) {
      throw new Forbidden(`this connection is ${principalId(was)}; a token for ${principalId(p)} needs a connection of its own`)
    }
    return p
  }

  // Connection ids: unique on this node (hub members, presence), short (one per socket).
  let lastId = 0
  const onOpen = (conn: Connection, raw: ServerWebSocket<Connection>) => {
    conn.socket = raw
    if (deps.sockets?.closing) return void raw.close(CLOSE.GOING_AWAY, GOING_AWAY_REASON)
    // Upgrades racing past the route's check are counted (and refused) here.
    const held = deps.limits.connections.open(conn.address, conn.principal)
    if ('refusal' in held) return void raw.close(CLOSE.RATE_LIMITED, closeReasonOf(held.refusal))
    conn.slot = held.slot
    deps.sockets?.open.set(conn.id, raw)
    connections.set(conn.id, conn)
    liveness.wake()
    if (conn.awaitingAuth) {
      conn.timer = setTimeout(() => close(conn, CLOSE.TOKEN_EXPIRED, 'authentication required: send { op: "auth", token } first'), deps.config.FANFARE_AUTH_TIMEOUT_MS)
    } else {
      scheduleExpiry(conn)
    }
  }
  const onClose = (conn: Connection) => {
    deps.sockets?.open.delete(conn.id)
    if (connections.get(conn.id) !== conn) return
    clearTimeout(conn.timer)
    connections.delete(conn.id)
    conn.slot.release()
    for (const channel of [...conn.channels]) leaveChannel(conn, channel, 'disconnected')
  }

  /**
   * A socket's `ws.data`, its hub Sink and its state in one object (see Connection). Bun's socket
   * is used as is: Elysia's ws route would keep its whole request context per socket (with a
   * closure per handler) and wrap every frame in a new object with a dozen bound methods.
   */
  class Socket implements Sink {
    readonly id = String(++lastId)
    awaitingAuth: boolean
    channels = new Set<string>()
    socket!: ServerWebSocket<Connection>
    acks: string[] | undefined = undefined
    slot!: Slot
    inFlight = 0
    closing?: { code: number; reason: string } = undefined
    timer: ReturnType<typeof setTimeout> | undefined = undefined
    hold: PublishHold | undefined = undefined
    publishes = 0
    heard = liveness.sweeps
    #rates: ConnectionRates | undefined = undefined
    constructor(
      public principal: Principal,
      readonly address: string,
    ) {
      this.awaitingAuth = principal.kind === 'anonymous' && deps.config.FANFARE_ANONYMOUS === 'off'
    }
    get rates(): ConnectionRates {
      return (this.#rates ??= deps.limits.rates.connection(this.address))
    }
    send(text: string) {
      deps.metrics.ws.sent(text)
      return sent(this.socket, this.socket.send(text))
    }
    subscribe(topic: string) {
      this.socket.subscribe(topic)
    }
    unsubscribe(topic: string) {
      if (this.socket.readyState === 1) this.socket.unsubscribe(topic)
    }
    overflow() {
      this.socket.close(CLOSE.SLOW_CONSUMER, 'slow consumer: reconnect and subscribe again')
    }
    open(raw: ServerWebSocket<Connection>) {
      onOpen(this, raw)
    }
    message(_: ServerWebSocket<Connection>, message: string | Buffer) {
      this.heard = liveness.sweeps
      onMessage(this, message).catch((err) => log.error({ err }, 'websocket frame failed'))
    }
    // Bun answers a client's ping itself; either way the client is alive.
    ping() {
      this.heard = liveness.sweeps
    }
    pong() {
      this.heard = liveness.sweeps
    }
    close(_: ServerWebSocket<Connection>, code: number) {
      deps.metrics.ws.disconnected(code)
      // The server cut it for not reading what it was sent: say who, as an operator looks for why.
      if (code === CLOSE.SLOW_CONSUMER) {
        const who = this.principal.kind === 'anonymous' ? { caller: 'anonymous' } : { caller: principalId(this.principal) }
        log.info({ ...who, address: this.address, channels: this.channels.size }, 'closed a slow consumer (4008): its queue passed FANFARE_WS_BACKPRESSURE_BYTES')
      }
      onClose(this)
    }
  }

  /** A subscribe that passed the limits, its channel counted on the socket: access, then its first frames. */
  const subscribe = async (conn: Connection, frame: { channel: string; since?: number; epoch?: string }) => {
    const target = presenceTarget(frame.channel)
    if (target !== undefined) {
      // Whoever may see the channel may see who is in it. Presence is state, not history:
      // a resume always gets a fresh snapshot.
      await checkAccess(conn.principal, target)
      if (!conn.channels.has(frame.channel)) return // unsubscribed meanwhile
      return void deps.presence.subscribe(conn, target, frame.since !== undefined)
    }
    await checkAccess(conn.principal, frame.channel)
    // Unsubscribed or closed while a room's visibility was read: the client was told it holds
    // nothing (or is gone), so the hub must not take it on (it would get updates it cannot
    // stop, uncounted by the channel limit, or keep a closed socket as a member for good).
    if (!conn.channels.has(frame.channel)) return
    const from = frame.since === undefined ? undefined : { since: frame.since, epoch: frame.epoch ?? '' }
    await deps.hub.subscribe(conn, frame.channel, from)
    // Present once its first frames are out (and if it did not leave or close meanwhile).
    if (isTracked(frame.channel) && conn.channels.has(frame.channel) && connections.get(conn.id) === conn) {
      deps.presence.track(frame.channel, conn.id, conn.principal)
    }
  }

  const onMessage = async (conn: Connection, message: string | Buffer) => {
    if (connections.get(conn.id) !== conn || conn.closing) return
    const reply = (frame: ServerFrame) => send(conn, frame)
    const parsed = parseFrame(message)
    if (!parsed.ok) return void reply({ op: 'error', ref: parsed.ref, error: parsed.error })
    const frame = parsed.frame
    if (conn.awaitingAuth && frame.op !== 'auth' && frame.op !== 'ping') {
      return void reply({ op: 'error', ref: frame.ref, error: { code: 'unauthorized', message: 'this server needs a token: send { "op": "auth", "token" } first' } })
    }
    try {
      switch (frame.op) {
        case 'auth': {
          let p: Principal
          try {
            p = await authenticate(conn, frame.token)
          } catch (err) {
            // Refused unchecked (its address failed too often): 4029 tells the client when to come back.
            if (err instanceof RateLimited) return void refuseSocket(conn, frame.ref, { code: 'rate_limited', message: err.message, retryAfterMs: err.retryAfterMs })
            const body = errorBody(err)
            if (err instanceof Unavailable || !(err instanceof AppError)) {
              // Not the credential's fault: it could not be checked now (the issuer's key set or the
              // database away). Never the terminal 4003: a refresh keeps the socket and the identity
              // it holds (good until it expires); a sign-in is closed with "try again later".
              if (body.code === 'internal') log.error({ err }, 'checking a credential failed')
              reply({ op: 'error', ref: frame.ref, error: { ...body, retryAfterMs: RETRY_CREDENTIAL_MS } })
              if (conn.principal.kind === 'anonymous') close(conn, CLOSE.TRY_AGAIN_LATER, `${body.code}: reconnect after ${RETRY_CREDENTIAL_MS} ms`)
              return
            }
            reply({ op: 'error', ref: frame.ref, error: body })
            return void close(conn, err instanceof TokenExpired ? CLOSE.TOKEN_EXPIRED : CLOSE.FORBIDDEN, body.code)
          }
          const refreshed = conn.principal.kind !== 'anonymous'
          const refused = conn.slot.identify(p)
          if (refused) return void refuseSocket(conn, frame.ref, refused)
          // A viewer's subscribes cost its socket only; signing in makes the user present in each
          // of them (a join to every node, and for a match an event the seat watcher appends):
          // charged to the user as that many subscribes, or a fresh socket after socket could make
          // a user join and leave 100 channels each, free. Refused, the socket closes as the viewer
          // it still is; the client reconnects after the wait.
          if (!refreshed && p.kind === 'user') {
            let tracked = 0
            for (const channel of conn.channels) if (isTracked(channel)) tracked++
            const over = deps.limits.rates.signIn(p, tracked)
            if (over) return void refuseSocket(conn, frame.ref, over)
          }
          const was = conn.principal
          conn.principal = p
          // A viewer who signs in: present from now on as that user, no longer as an anonymous
          // connection (untracked later as the user, the anonymous one would stay counted for good).
          if (!refreshed && p.kind === 'user') {
            for (const channel of conn.channels) {
              if (!isTracked(channel)) continue
              deps.presence.untrack(channel, conn.id, was, 'left')
              deps.presence.track(channel, conn.id, p)
            }
          }
          conn.awaitingAuth = false
          scheduleExpiry(conn)
          // After `authed`: the client learns of its fresh token first, then of what it lost.
          if (refreshed) queueMicrotask(() => void recheckConnection(conn).catch((err) => log.warn({ err }, 're-checking channels after a token refresh failed')))
          return void reply({
            op: 'authed',
            ref: frame.ref,
            principal: principalId(p),
            ...(p.kind !== 'anonymous' && p.expiresAt !== undefined ? { expiresAt: new Date(p.expiresAt).toISOString() } : {}),
            // How long a resent event id is still recognised: a client resends an unacknowledged
            // event only within it (after that, a resend could be stored twice).
            dedupWindowMs: deps.config.FANFARE_DEDUP_WINDOW_MS,
          })
        }
        case 'publish': {
          const now = performance.now()
          const n = ++conn.publishes
          const held = heldBack(conn.hold, frame.event.id, now)
          if (held) {
            // Behind a 503 the client did nothing wrong: refused, but not weighed as abuse.
            if ('perSecond' in held) {
              // Refused for the rate like the one it waits behind: counted alike (the limit counted only that one).
              deps.metrics.ingest.rateLimited('ws_publish', conn.principal.kind)
              return void rateLimited(conn, frame.ref, held)
            }
            // Answered 503 like the one it waits behind: counted alike (fanfare_events_refused_total).
            deps.metrics.ingest.refused(held.code, 1)
            return void reply({ op: 'error', ref: frame.ref, error: { ...held, details: { retryAfterMs: held.retryAfterMs } } })
          }
          const refused = conn.rates.publish(conn.principal)
          if (refused) {
            conn.hold = { id: frame.event.id, n, retryAt: now + refused.retryAfterMs, refusal: refused }
            return void rateLimited(conn, frame.ref, refused)
          }
          conn.hold = undefined
          warnIfNear(conn)
          conn.inFlight++
          try {
            const [result] = await deps.publish([frame.event], conn.principal, { via: 'ws', trace: contextOfTraceparent(frame.traceparent) })
            return void ackLater(conn, { op: 'ack', ref: frame.ref, ...result })
          } catch (err) {
            // A 503 (this node's queue full, NATS away): the client sends the event again, and the
            // events it pipelined behind it must not be stored first, as behind a rate refusal.
            if (err instanceof Unavailable) {
              conn.hold = holdAfterUnavailable(conn.hold, { id: frame.event.id, n, retryAt: performance.now() + err.retryAfterMs }, err)
            }
            throw err
          } finally {
            conn.inFlight--
            closeWhenAcked(conn)
          }
        }
        case 'subscribe': {
          // Charged first: every subscribe command counts, refused or not.
          const refused = conn.rates.subscribe(conn.principal)
          if (refused) return void rateLimited(conn, frame.ref, refused)
          warnIfNear(conn)
          if (conn.channels.has(frame.channel)) {
            return void reply({ op: 'error', ref: frame.ref, error: { code: 'already_subscribed', message: `already subscribed to ${frame.channel}` } })
          }
          if (conn.channels.size >= maxSubscriptions) {
            deps.metrics.ingest.rateLimited('ws_channels', conn.principal.kind)
            return void reply({ op: 'error', ref: frame.ref, error: { code: 'too_many_subscriptions', message: `at most ${maxSubscriptions} channels per connection` } })
          }
          conn.channels.add(frame.channel)
          // Its access check and first frames (a snapshot or a resume: the reads behind them) in a
          // span of its own when tracing is on.
          const attributes = () => ({ 'fanfare.channel': frame.channel, 'fanfare.channel.kind': parseChannel(frame.channel)?.kind ?? '', 'fanfare.resume': frame.since !== undefined })
          return await commandSpan('fanfare.subscribe', frame.traceparent, attributes, () => subscribe(conn, frame))
        }
        case 'ping':
          return void reply({ op: 'pong', ...(frame.ref === undefined ? {} : { ref: frame.ref }) })
        case 'unsubscribe': {
          const was = leaveChannel(conn, frame.channel, 'left')
          return void reply({ op: 'unsubscribed', ref: frame.ref, channel: frame.channel, ...(was ? {} : { wasSubscribed: false }) })
        }
        default: {
          const unreachable: never = frame
          return unreachable
        }
      }
    } catch (err) {
      if (frame.op === 'subscribe' && conn.channels.delete(frame.channel) && isTracked(frame.channel)) {
        // A sign-in while this subscribe was under way tracked it already (see `auth`): not any more.
        deps.presence.untrack(frame.channel, conn.id, conn.principal, 'left')
      }
      const body = errorBody(err)
      if (body.code === 'internal') log.error({ err, op: frame.op }, 'websocket frame failed')
      else if (body.code === 'database_unavailable') log.warn({ err: dbErrorSummary(err), op: frame.op }, 'database unavailable')
      reply({ op: 'error', ref: frame.ref, ...(frame.op === 'subscribe' ? { channel: frame.channel } : {}), error: body })
    }
  }

  return new Elysia({ name: 'realtime' }).get(
    '/v1/ws',
    async ({ query, request, set, server }) => {
      if (request.headers.get('upgrade')?.toLowerCase() !== 'websocket') {
        set.status = 426
        set.headers['upgrade'] = 'websocket'
        return { error: { code: 'upgrade_required', message: 'GET /v1/ws is a WebSocket: send Upgrade: websocket' } }
      }
      // The address is checked first (connect rate, open sockets), so a flood costs no token checks.
      const address = deps.limits.clientAddress(server?.requestIP(request)?.address, request.headers.get('x-forwarded-for'))
      const refusedAddress = deps.limits.connections.admitAddress(address)
      if (refusedAddress) return refuseUpgrade(set, refusedAddress)
      let principal: Principal
      try {
        // A browser can only put the token in the query; a server's client may send it as a header.
        const authorization = request.headers.get('authorization')
        const verify = () => {
          const header = bearerOf(authorization)
          if (header !== undefined && query.token !== undefined) throw new Invalid('invalid_request', 'give the token once: as ?token= or as Authorization: Bearer, not both')
          // A credential left out by mistake (a client's unset variable), as `Bearer ` with nothing
          // after it on REST: told so, never taken for an anonymous viewer who asked for nothing.
          if (query.token === '') throw new Unauthorized('empty ?token= (leave it out to connect without a credential)')
          const token = header ?? query.token
          return token ? deps.authenticator.authenticate(token) : ANONYMOUS
        }
        // Without a credential there is nothing to guess: the address's failures do not matter.
        // An HS256 token is verified at once: the upgrade then waits on nothing, as an anonymous one.
        const checked = authorization || query.token !== undefined ? checkCredential(deps.limits.authFailures, address, verify) : ANONYMOUS
        principal = checked instanceof Promise ? await checked : checked
      } catch (err) {
        if (err instanceof RateLimited) return refuseUpgrade(set, { code: err.code, message: err.message, retryAfterMs: err.retryAfterMs })
        if (!(err instanceof AppError)) throw err
        if (err instanceof Unavailable) set.headers['retry-after'] = retryAfterSeconds(err.retryAfterMs)
        set.status = err.status
        return { error: { code: err.code, message: err.message } }
      }
      const refusedPrincipal = deps.limits.connections.admitPrincipal(principal)
      if (refusedPrincipal) return refuseUpgrade(set, refusedPrincipal)
      if (!server?.upgrade(request, { data: new Socket(principal, address) })) {
        set.status = 400
        return { error: { code: 'bad_request', message: 'Expected a websocket connection' } }
      }
    },
    {
      query: t.Object({ token: t.Optional(t.String({ maxLength: 8192 })) }),
      // What the upgrade may answer instead of 101, in the order it is checked (README "Limits"):
      // 426 without Upgrade, 403 origin_not_allowed, 429 address limits, 401 the credential (503 if
      // a key cannot be looked up), 422 a token given twice, 429 the user's sockets, 400 a failed upgrade.
      response: { 400: ErrorResponse, 401: ErrorResponse, 403: ErrorResponse, 422: ErrorResponse, 426: ErrorResponse, 429: ErrorResponse, 503: ErrorResponse },
      // A credential or none, as ?token= or Authorization: Bearer (or later in an `auth` frame): an
      // upgrade without one opens, also where anonymous viewers are off (it must then authenticate).
      detail: { summary: 'WebSocket: publish events and subscribe to channels', tags: ['realtime'], security: [{}, { bearer: [] }] },
    },
  )
}
