import { hostname } from 'node:os'
import type { NatsConnection } from '@nats-io/transport-node'
import type { Config } from '../../../core/config'
import type { Logger } from '../../../core/logger'
import type { SubscriptionWatch } from '../../../core/nats-subscriptions'
import type { Principal } from '../auth/principal'
import type { Sink } from '../realtime/channel-hub'
import { startPresenceCluster } from './cluster'
import { createPresenceFeed, presenceSnapshot, type PresenceSnapshot } from './feed'
import { createLocalPresence, type LocalLeave, type Who } from './local'
import { createPresenceView, type PresenceChange } from './view'

export type Presence = {
  /** A connection subscribed to a tracked channel (chat, stream, match). */
  track(channel: string, conn: string, principal: Principal): void
  /** It left the channel: unsubscribed (`left`), closed (`disconnected`, after the grace), or closed for a revoked credential (`revoked`, at once). */
  untrack(channel: string, conn: string, principal: Principal, reason: LocalLeave): void
  /** `user`'s credential was revoked: where they linger on this node (a closed socket within the grace), they leave now as `revoked`. */
  revoked(user: string): void
  /** A socket watches `presence:<channel>`: snapshot now, updates after. */
  subscribe(sink: Sink, channel: string, resync?: boolean): void
  unsubscribe(sink: Sink, channel: string): boolean
  /** Ids of this node's sockets watching `presence:<channel>`. */
  watchers(channel: string): Iterable<string>
  /** What `GET /v1/presence/:channel` and a snapshot hold. */
  snapshot(channel: string): PresenceSnapshot
  /** Cluster-wide totals of a channel (for the stream viewer sampler and metrics). */
  totals(channel: string): { connections: number; users: string[] }
  /**
   * Whether `user` is present in `channel` on some node (cluster-wide), in O(1): `totals` copies
   * every present user, which a question about one user (a seat) must not pay on a channel with
   * thousands of spectators.
   */
  isPresent(channel: string, user: string): boolean
  /** Channels with anyone present, cluster-wide. */
  channels(): string[]
  /**
   * Calls `listener` with every change of the cluster-wide totals (a user present in a channel on
   * some node, or on none any more). Returns a function that removes it.
   */
  onChange(listener: (change: PresenceChange) => void): () => void
  /** This node's id and the peers it hears from. */
  node: string
  peers(): string[]
  stop(): Promise<void>
}

/** Who a principal counts as: users as users (and connections), everyone else as a connection. */
export const whoOf = (p: Principal): Who => (p.kind === 'user' ? { user: p.id, ...(p.name ? { name: p.name } : {}) } : {})

/**
 * Starts this API node's presence: its own part (local), the cluster's view of every node's part
 * (view, fed over NATS by the cluster), and the frames for `presence:<channel>` subscribers (feed).
 */
export function startPresence(deps: {
  config: Pick<Config, 'FANFARE_SUBJECT_PREFIX' | 'FANFARE_PRESENCE_MAX_MEMBERS' | 'FANFARE_PRESENCE_INTERVAL_MS' | 'FANFARE_PRESENCE_TTL_MS' | 'FANFARE_PRESENCE_GRACE_MS'>
  nc: NatsConnection
  logger: Logger
  /** Sends a frame to every socket of a topic (Bun's server.publish). */
  publish: (topic: string, text: string) => void
  /** The node's watched subscriptions; one of its own when absent. */
  subscriptions?: SubscriptionWatch
}): Presence {
  const node = `${hostname()}-${process.pid}`
  const inc = crypto.randomUUID().slice(0, 8)
  let feed: ReturnType<typeof createPresenceFeed> | undefined
  const listeners = new Set<(change: PresenceChange) => void>()
  const view = createPresenceView((change) => {
    feed?.onChange(change)
    for (const l of listeners) l(change)
  })
  feed = createPresenceFeed({ view, publish: deps.publish, maxMembers: deps.config.FANFARE_PRESENCE_MAX_MEMBERS, intervalMs: deps.config.FANFARE_PRESENCE_INTERVAL_MS, inc })
  let cluster: ReturnType<typeof startPresenceCluster> | undefined
  const local = createLocalPresence({ graceMs: deps.config.FANFARE_PRESENCE_GRACE_MS, onDelta: (d) => cluster?.local(d) })
  cluster = startPresenceCluster({
    nc: deps.nc,
    prefix: deps.config.FANFARE_SUBJECT_PREFIX,
    node,
    inc,
    view,
    localState: () => local.state(),
    ttlMs: deps.config.FANFARE_PRESENCE_TTL_MS,
    graceMs: deps.config.FANFARE_PRESENCE_GRACE_MS,
    onResync: (channels) => feed?.resync(channels),
    onLeft: (channel, user, reason) => local.endGrace(channel, user, reason),
    logger: deps.logger,
    subscriptions: deps.subscriptions,
  })
  const watchers = new Map<string, Set<string>>()
  return {
    node,
    track: (channel, conn, p) => local.track(channel, conn, whoOf(p)),
    untrack: (channel, conn, p, reason) => local.untrack(channel, conn, whoOf(p), reason),
    revoked: (user) => local.endGraces(user),
    subscribe(sink, channel, resync) {
      feed!.subscribe(sink, channel, resync)
      let w = watchers.get(channel)
      if (!w) watchers.set(channel, (w = new Set()))
      w.add(sink.id)
    },
    unsubscribe(sink, channel) {
      const w = watchers.get(channel)
      w?.delete(sink.id)
      if (w?.size === 0) watchers.delete(channel)
      return feed!.unsubscribe(sink, channel)
    },
    watchers: (channel) => watchers.get(channel) ?? [],
    snapshot: (channel) => presenceSnapshot(view, channel, deps.config.FANFARE_PRESENCE_MAX_MEMBERS),
    totals: (channel) => {
      const t = view.of(channel)
      return { connections: t.connections, users: [...t.users.keys()] }
    },
    isPresent: (channel, user) => view.of(channel).users.has(user),
    channels: () => view.channels(),
    onChange(listener) {
      listeners.add(listener)
      return () => void listeners.delete(listener)
    },
    peers: () => cluster!.peers(),
    async stop() {
      await cluster!.stop()
      local.stop()
      feed!.stop()
    },
  }
}
