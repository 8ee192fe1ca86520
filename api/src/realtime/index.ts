import { Elysia, t } from 'elysia'
import type { Config } from '../../../core/config'
import { callerOf, type Caller, type EventInput, type Publisher } from '../../../core/events'
import type { Logger } from '../../../core/logger'
import { identify } from '../auth'
import type { ChannelHub, Sink } from './channel-hub'
import { errorBody, parseFrame } from './protocol'
import { tokenBucket, type TokenBucket } from '../../../core/token-bucket'

/** What the WebSocket route needs: the hub for channels and the ingest path for publishing. */
export type RealtimeDeps = {
  config: Pick<Config, 'FANFARE_INGEST_TOKEN' | 'FANFARE_ADMIN_TOKEN' | 'FANFARE_WS_SUBSCRIBES_PER_SECOND'>
  hub: ChannelHub
  publish: (events: EventInput[], caller: Caller) => Promise<{ id: string; seq: number; duplicate: boolean }[]>
  logger: Logger
  /** Most channels one connection may watch. */
  maxSubscriptions?: number
  /** Open sockets of this node, kept so shutdown can close them with "going away". */
  sockets?: SocketRegistry
}

/** What the node needs of an open socket: Bun's ServerWebSocket (Elysia's `ws.raw`). */
export type OpenSocket = { close: (code: number, reason: string) => void; getBufferedAmount: () => number; readyState: number }

/** What acks need of a socket (Bun's ServerWebSocket; Elysia's older type lacks `cork`). */
type AckSocket = { readyState: number; send: (text: string) => number; cork: (cb: () => void) => unknown }

/** The open WebSockets of one node. */
export type SocketRegistry = {
  open: Map<string, OpenSocket>
  /** Set once the node is shutting down: new sockets are closed at once. */
  closing: boolean
  /** Told the result of every direct send to a socket (-1: queued under backpressure, 0: dropped). */
  sent: (ws: OpenSocket, result: number) => void
}

/** Close code of a server going down (RFC 6455 "going away"): reconnect, to another node if needed. */
export const CLOSE_GOING_AWAY = 1001

/** Close code for a client that fell too far behind: it must reconnect and re-sync. */
export const CLOSE_SLOW_CONSUMER = 4008

type Connection = {
  publisher: Publisher
  channels: Set<string>
  sink: Sink
  /** Publish acks waiting for the end of the event-loop turn (see ackLater). */
  acks: string[]
  /** Subscribes this connection may still make now (see FANFARE_WS_SUBSCRIBES_PER_SECOND). */
  subscribes: TokenBucket
}

/** Who a WebSocket client is, from `?token=`: anonymous, ingest or admin; null if the token is wrong. */
function publisherFor(token: string | undefined, config: RealtimeDeps['config']): Publisher | null {
  if (token === undefined || token === '') return 'anonymous'
  return identify(config, token) ?? null
}

/**
 * `GET /v1/ws`: JSON text frames. `publish` appends an event (anonymous clients: chat only),
 * `subscribe` sends a snapshot and then every update of a channel in version order,
 * `unsubscribe` stops it. A bad frame gets an `error` frame; the connection stays usable.
 */
export function realtimeRoutes(deps: RealtimeDeps) {
  const connections = new Map<string, Connection>()
  const maxSubscriptions = deps.maxSubscriptions ?? 100
  const log = deps.logger.child({ component: 'realtime' })

  // Every direct send reports its result, so that a socket falling behind is seen (SocketRegistry).
  const sent = (raw: unknown, result: number) => {
    deps.sockets?.sent(raw as OpenSocket, result)
    return result
  }
  // Acks complete together (one JetStream reply read acknowledges many publishes), outside Bun's
  // own corking of the message handler: each send would be a socket write. They are queued per
  // socket and sent at the end of the turn in one corked write.
  const acking = new Map<AckSocket, Connection>()
  const flushAcks = () => {
    for (const [raw, conn] of acking) {
      const frames = conn.acks
      conn.acks = []
      if (raw.readyState === 1) raw.cork(() => frames.forEach((f) => sent(raw, raw.send(f))))
    }
    acking.clear()
  }
  const ackLater = (raw: AckSocket, conn: Connection, frame: object) => {
    conn.acks.push(JSON.stringify(frame))
    if (acking.size === 0) setImmediate(flushAcks)
    acking.set(raw, conn)
  }

  return new Elysia({ name: 'realtime' }).ws('/v1/ws', {
    query: t.Object({ token: t.Optional(t.String({ maxLength: 256 })) }),
    detail: { summary: 'WebSocket: publish events and subscribe to channels', tags: ['realtime'] },
    beforeHandle({ query, set }) {
      if (publisherFor(query.token, deps.config) === null) {
        set.status = 401
        return { error: { code: 'unauthorized', message: 'the token is not valid' } }
      }
    },
    open(ws) {
      const raw = ws.raw
      if (deps.sockets?.closing) return void raw.close(CLOSE_GOING_AWAY, 'server shutting down')
      // Elysia types `raw` with an older ServerWebSocket that lacks getBufferedAmount (Bun has it).
      deps.sockets?.open.set(ws.id, raw as unknown as OpenSocket)
      const conn: Connection = {
        publisher: publisherFor(ws.data.query.token, deps.config)!,
        channels: new Set(),
        acks: [],
        subscribes: tokenBucket({ capacity: maxSubscriptions, perSecond: deps.config.FANFARE_WS_SUBSCRIBES_PER_SECOND }),
        sink: {
          id: ws.id,
          send: (text) => sent(raw, raw.send(text)),
          subscribe: (topic) => raw.subscribe(topic),
          unsubscribe: (topic) => raw.unsubscribe(topic),
          overflow: () => raw.close(CLOSE_SLOW_CONSUMER, 'slow consumer: reconnect and subscribe again'),
        },
      }
      connections.set(ws.id, conn)
    },
    async message(ws, message) {
      const conn = connections.get(ws.id)
      if (!conn) return
      const reply = (frame: object) => sent(ws.raw, ws.raw.send(JSON.stringify(frame)))
      const parsed = parseFrame(message)
      if (!parsed.ok) return void reply({ op: 'error', ref: parsed.ref, error: parsed.error })
      const frame = parsed.frame
      try {
        switch (frame.op) {
          case 'publish': {
            const [result] = await deps.publish([frame.event], callerOf(conn.publisher))
            return void ackLater(ws.raw as unknown as AckSocket, conn, { op: 'ack', ref: frame.ref, ...result })
          }
          case 'subscribe': {
            // Charged first: every subscribe command counts, refused or not.
            const wait = conn.subscribes.take()
            if (wait > 0) {
              return void reply({
                op: 'error',
                ref: frame.ref,
                error: { code: 'rate_limited', message: `at most ${deps.config.FANFARE_WS_SUBSCRIBES_PER_SECOND} subscribes per second per connection`, details: { retryAfterMs: wait } },
              })
            }
            if (conn.channels.has(frame.channel)) {
              return void reply({ op: 'error', ref: frame.ref, error: { code: 'already_subscribed', message: `already subscribed to ${frame.channel}` } })
            }
            if (conn.channels.size >= maxSubscriptions) {
              return void reply({ op: 'error', ref: frame.ref, error: { code: 'too_many_subscriptions', message: `at most ${maxSubscriptions} channels per connection` } })
            }
            conn.channels.add(frame.channel)
            const from = frame.since === undefined ? undefined : { since: frame.since, epoch: frame.epoch ?? '' }
            await deps.hub.subscribe(conn.sink, frame.channel, from)
            return
          }
          case 'unsubscribe': {
            conn.channels.delete(frame.channel)
            const was = deps.hub.unsubscribe(conn.sink, frame.channel)
            return void reply({ op: 'unsubscribed', ref: frame.ref, channel: frame.channel, ...(was ? {} : { wasSubscribed: false }) })
          }
          default: {
            const unreachable: never = frame
            return unreachable
          }
        }
      } catch (err) {
        if (frame.op === 'subscribe') conn.channels.delete(frame.channel)
        const body = errorBody(err)
        if (body.code === 'internal') log.error({ err, op: frame.op }, 'websocket frame failed')
        reply({ op: 'error', ref: frame.ref, error: body })
      }
    },
    close(ws) {
      deps.sockets?.open.delete(ws.id)
      const conn = connections.get(ws.id)
      if (!conn) return
      connections.delete(ws.id)
      deps.hub.removeSink(conn.sink, conn.channels)
    },
  })
}
