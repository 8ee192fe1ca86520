import type { Server } from 'bun'
import type { NatsConnection } from '@nats-io/transport-node'
import { channelKinds, type ChangeNotice, type ChannelKind } from '../../../core/channels'
import type { Config } from '../../../core/config'
import type { Logger } from '../../../core/logger'
import { createMetrics, type Metrics } from '../../../core/metrics'
import { siteOf, topology } from '../../../core/nats'
import type { SubscriptionWatch } from '../../../core/nats-subscriptions'
import type { Ingest } from '../modules/events/service'
import { startChangeFeed, type FeedStatus } from './change-feed'
import { createChannelHub, type Snapshot } from './channel-hub'
import { deploymentHistoryReader, type HistoryReader } from './history'
import type { Db } from '../../../core/db/client'
import { windowsOf } from './windows'
import type { Security } from '../auth/security'
import { createSlowConsumers } from './slow-consumers'
import { startPresence, type Presence } from '../presence'
import { realtimeRoutes, type OpenSocket, type SocketRegistry } from './index'
import { MAX_SUBSCRIPTIONS, type Limits } from '../limits'

export type Realtime = {
  /** The `/v1/ws` route, given the app's ingest service and limits (plug into createApp's `realtime`). */
  routes: (ctx: { ingest: Ingest; limits: Limits }) => ReturnType<typeof realtimeRoutes>
  /** Gives the hub the listening server, whose `publish` reaches every socket of a topic. */
  bind: (server: Server<unknown>) => void
  /**
   * Closes every WebSocket with 1001 "going away" (and any that opens from now on), each once the
   * acks of its publishes in flight are sent, then waits up to `timeoutMs` for the clients to
   * acknowledge, so the close frames leave before the server stops.
   */
  goAway: (timeoutMs?: number) => Promise<void>
  /** Each change feed's state: a node whose feeds do not all follow their streams is not ready. */
  feeds: () => FeedStatus[]
  /** Who is where, cluster-wide (GET /v1/presence, the stream viewer sampler). */
  presence: Presence
  /** Follows one kind's change feed as the hub does: every notice in order, and when some may have been missed. Returns the unsubscribe. */
  onNotices: (kind: ChannelKind, listener: NoticeListener) => () => void
  /** This node's load now: open sockets, subscriptions, channels, and the `busiest` most watched (GET /admin/nodes). */
  stats: (busiest: number) => { connections: number; subscriptions: number; channels: number; busiest: { channel: string; subscribers: number }[] }
  stop: () => Promise<void>
}

/** What a change feed tells besides the hub (see Realtime.onNotices). */
export type NoticeListener = { notice: (n: ChangeNotice) => void; resync: () => void }

/**
 * Starts this node's live side: follows the change stream and feeds the channel hub. Subscriptions
 * are only served once the feed is running, so no notice can fall between snapshot and feed.
 */
export async function startRealtime(deps: {
  config: Config
  nc: NatsConnection
  logger: Logger
  security: Security
  snapshot: (channel: string) => Promise<Snapshot>
  gapTimeoutMs?: number
  /** The process's metrics; a registry of its own when absent. */
  metrics?: Metrics
  /** The node's watched subscriptions (presence, the feeds' advisories); each part makes its own when absent. */
  subscriptions?: SubscriptionWatch
  /** Postgres (the primary): resumes read channel history from it (change_history, live batches) and from the change streams (see deploymentHistoryReader). */
  db?: Db
  /** Tests only: wraps the history reader resumes use (a test makes a read slow while live updates arrive). */
  wrapHistory?: (read: HistoryReader) => HistoryReader
}): Promise<Realtime> {
  const metrics = deps.metrics ?? createMetrics()
  const committedAt = lastParsed()
  const storedAt = lastParsed()
  const logger = deps.logger.child({ component: 'realtime' })
  let server: Server<unknown> | undefined
  const t = topology(deps.config)
  // Slow consumers are closed with 4008 and a reason before Bun's backstop (see createSlowConsumers).
  const open = new Map<string, OpenSocket>()
  const slow = createSlowConsumers({
    limit: deps.config.FANFARE_WS_BACKPRESSURE_BYTES,
    maxSubscriptions: MAX_SUBSCRIPTIONS,
    members: (topic) => hub.members(topic),
    socket: (id) => open.get(id),
  })
  const sockets: SocketRegistry = { open, closing: false, sent: slow.sent }
  const windowOf = windowsOf(deps.config)
  const hub = createChannelHub({
    snapshot: deps.snapshot,
    history: (deps.wrapHistory ?? ((read) => read))(
      deploymentHistoryReader({ db: deps.db, config: deps.config, stream: { nc: deps.nc, streams: t.changeStreams, prefix: t.prefix }, edge: siteOf(deps.config).kind === 'edge' }),
    ),
    publish: (topic, text) => {
      if (!server) return
      if (windowOf(topic)) {
        // A windowed channel's frames go to its topic's sockets one by one: Bun writes a topic
        // publish only when the event-loop turn ends (a send goes out at once), and under load
        // that turn held each reactions frame 40-100 ms (bench/findings.md). One frame per socket
        // per window: there is no burst for a publish to coalesce, and the CPU is the same.
        for (const id of hub.members(topic)) {
          const ws = open.get(id)
          if (ws?.isSubscribed(topic)) slow.sent(ws, ws.send(text))
        }
      } else slow.published(topic, text, server.publish(topic, text))
      // Counted once per publish, by its recipients (not once per frame sent).
      metrics.ws.sent(text, server.subscriberCount(topic))
    },
    onPushed: (n) => {
      const now = Date.now()
      metrics.push.pushed(kindOf(n.channel), committedAt(n.at), n.stored === undefined ? undefined : storedAt(n.stored), now)
    },
    gapTimeoutMs: deps.gapTimeoutMs ?? 5000,
    // Reactions come by the thousand a second: their subscribers get one frame per window.
    windowOf,
    onError: (err, channel) => logger.error({ err, channel }, 'resync failed; retrying'),
  })
  // Presence frames go to `presence:<channel>` topics like any other channel's.
  const presence = startPresence({
    config: deps.config,
    nc: deps.nc,
    // Untagged: presence tags its lines itself (a second `component` key would repeat in every line).
    logger: deps.logger,
    subscriptions: deps.subscriptions,
    publish: (topic, text) => {
      if (!server) return
      server.publish(topic, text)
      metrics.ws.sent(text, server.subscriberCount(topic))
    },
  })
  metrics.presence.watch(() => {
    let users = 0
    for (const channel of presence.channels()) users += presence.totals(channel).users.length
    return users
  })
  const listeners = new Map<ChannelKind, Set<NoticeListener>>(channelKinds.map((kind) => [kind, new Set()]))
  const feeds = await Promise.all(
    channelKinds.map((kind) => {
      const tapped = listeners.get(kind)!
      return startChangeFeed({
        nc: deps.nc,
        stream: t.changeStreams[kind],
        logger,
        onNotice: (n) => {
          hub.onNotice(n)
          // Per notice: no iterator when nothing listens (the usual case).
          if (tapped.size > 0) for (const l of tapped) l.notice(n)
        },
        onRestart: (run) => {
          hub.onRestart(run.channel, run.version, run.epoch)
          // A listener keeps what it learnt of the channel's history: it starts again, as after a lost run.
          for (const l of tapped) l.resync()
        },
        onResync: () => {
          void hub.resyncAll(kind)
          for (const l of tapped) l.resync()
        },
        recipients: (channel) => server?.subscriberCount(channel) ?? 0,
        subscriptions: deps.subscriptions,
      })
    }),
  )
  return {
    routes: ({ ingest, limits }) =>
      realtimeRoutes({
        limits,
        config: deps.config,
        hub,
        presence,
        publish: ingest.publish,
        authenticator: deps.security.authenticator,
        revocations: deps.security.revocations,
        rooms: deps.security.rooms,
        logger: deps.logger,
        sockets,
        metrics,
      }),
    bind: (s) => void (server = s),
    feeds: () => feeds.map((f) => f.status()),
    goAway: async (timeoutMs = 2_000) => {
      sockets.closing = true
      sockets.goAway?.()
      const deadline = Date.now() + timeoutMs
      while (sockets.open.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
    },
    presence,
    onNotices: (kind, listener) => {
      listeners.get(kind)!.add(listener)
      return () => void listeners.get(kind)!.delete(listener)
    },
    stats: (busiest) => {
      const channels = hub.stats()
      return {
        connections: sockets.open.size,
        subscriptions: channels.reduce((n, c) => n + c.subscribers, 0),
        channels: channels.length,
        busiest: channels
          .map((c) => ({ channel: c.channel, subscribers: c.subscribers }))
          .sort((a, b) => b.subscribers - a.subscribers || a.channel.localeCompare(b.channel))
          .slice(0, busiest),
      }
    },
    stop: async () => {
      await presence.stop()
      await Promise.all(feeds.map((f) => f.stop()))
      hub.stop()
    },
  }
}

/** A channel's kind without allocating (a name is `<kind>:<rest>`); `other` for none. */
function kindOf(channel: string): ChannelKind | 'other' {
  for (const kind of channelKinds) if (channel.startsWith(kind) && channel.charCodeAt(kind.length) === 58 /* : */) return kind
  return 'other'
}

/**
 * Parses ISO times, remembering the last one: every notice of a run carries the same times, so a
 * run of 60 changes costs one parse, not 60.
 */
function lastParsed(): (iso: string) => number {
  let text = ''
  let ms = 0
  return (iso) => {
    if (iso !== text) {
      text = iso
      ms = Date.parse(iso)
    }
    return ms
  }
}
