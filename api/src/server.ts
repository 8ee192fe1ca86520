import { startRetentionWatch } from '../../core/retention-watch'
import { projectionAreas, projectionNames } from '../../core/projections'
import { createMetrics } from '../../core/metrics'
import { ListenFailed } from '../../core/listen'
import { createSubscriptionWatch, watchPublishDenials } from '../../core/nats-subscriptions'
import { createApp } from './app'
import type { ApiDeps } from './deps'
import { startRealtime } from './realtime/start'
import type { HistoryReader } from './realtime/history'
import { snapshotReader } from './realtime/snapshots'
import { startSecurity } from './auth/security'
import { createLimits, type Limits } from './limits'
import { createIngest } from './modules/events/service'
import { startViewerSampler } from './modules/streams/sampler'
import { liveStreamsToSample } from './modules/streams/service'
import { startSeatWatcher } from './modules/matches/seats'
import { answerNodeQueries, BUSIEST } from './modules/admin/nodes'

/** How long a stopping node waits for its requests and publishes in flight: the publish timeout, and a margin. */
const DRAIN_MS = 6_000

/** A listening API node. */
export type RunningApi = {
  /** The bound port (useful when config.PORT is 0). */
  port: number
  /** The node's limits (tests read their shared counts). */
  limits: Limits
  /**
   * Stops accepting connections, answers the requests and WebSocket publishes in flight (at most
   * DRAIN_MS), closes the rest (WebSockets with "going away"), stops the feed. Safe to call twice.
   */
  stop: () => Promise<void>
}

/**
 * Starts an API node: follows the change stream for live updates, builds the app with REST and
 * WebSocket routes, and listens on config.HOST:config.PORT.
 */
export async function startApi(
  deps: Omit<ApiDeps, 'realtime' | 'security'> & {
    /** False where the process's stream workers already run the retention watch (npm start). Default true. */
    watchRetention?: boolean
    /** Tests only: see startRealtime. */
    wrapHistory?: (read: HistoryReader) => HistoryReader
  },
): Promise<RunningApi> {
  const metrics = deps.metrics ?? createMetrics()
  // Every core NATS subscription of the node, watched for permissions an operator takes away while
  // it runs: readiness and the metric read what NATS denies now.
  const subscriptions = deps.subscriptions ?? createSubscriptionWatch({ nc: deps.nc, logger: deps.logger })
  metrics.nats.watchDenied(subscriptions.denied)
  const publishDenials = watchPublishDenials({ nc: deps.nc, prefix: deps.config.FANFARE_SUBJECT_PREFIX, logger: deps.logger, count: metrics.nats.publishDenied })
  const security = await startSecurity({ ...deps, subscriptions })
  const realtime = await startRealtime({ ...deps, metrics, security, subscriptions, snapshot: snapshotReader(deps.readDb ?? deps.db) })
  // Limits per user, key and address hold across the nodes: counts are shared over NATS.
  const limits = createLimits({ config: deps.config, metrics, share: { nc: deps.nc, logger: deps.logger, subscriptions } })
  // One ingest service for REST, WebSocket and the viewer sampler: one in-flight budget per node.
  const ownIngest = deps.ingest ? undefined : createIngest({ config: deps.config, nc: deps.nc, logger: deps.logger, metrics, rooms: security.rooms })
  const ingest = deps.ingest ?? ownIngest!
  const app = createApp({ ...deps, metrics, security, realtime, limits, ingest, subscriptions })
  try {
    app.listen({ hostname: deps.config.HOST, port: deps.config.PORT })
  } catch (err) {
    throw new ListenFailed(deps.config.HOST, deps.config.PORT, 'PORT', err)
  }
  const server = app.server
  if (!server) throw new Error('the API server did not start')
  realtime.bind(server)
  const port = server.port ?? deps.config.PORT
  deps.logger.info({ host: deps.config.HOST, port }, 'api listening')
  const startedAt = new Date().toISOString()
  const nodeQueries = answerNodeQueries({
    subscriptions,
    prefix: deps.config.FANFARE_SUBJECT_PREFIX,
    stats: () => ({ id: realtime.presence.node, startedAt, ...realtime.stats(BUSIEST) }),
  })
  const sampler = startViewerSampler({ presence: realtime.presence, ingest, liveStreams: () => liveStreamsToSample(deps.db), logger: deps.logger })
  const seats = startSeatWatcher({ presence: realtime.presence, notices: (l) => realtime.onNotices('match', l), ingest, db: deps.db, graceMs: deps.config.FANFARE_MATCH_GRACE_MS, presenceTtlMs: deps.config.FANFARE_PRESENCE_TTL_MS, revocations: security.revocations, logger: deps.logger })
  // The witness of unapplied events and their age (see startRetentionWatch), taken here too so
  // that it goes on while every worker is down. The hub's event stream only: not at an edge.
  const retention =
    deps.config.FANFARE_EDGE_DOMAIN || deps.watchRetention === false
      ? undefined
      : startRetentionWatch({ config: deps.config, db: deps.db, nc: deps.nc, logger: deps.logger, metrics, projections: projectionNames.map((name) => ({ name, area: projectionAreas[name] })) })
  let stopping: Promise<void> | undefined
  return {
    port,
    limits,
    stop: () =>
      (stopping ??= (async () => {
        await sampler.stop()
        await retention?.stop()
        await seats.stop()
        nodeQueries.stop()
        // No new connections from here (a load balancer moves on at once), but what the node took
        // is answered: requests in flight finish, sockets close with 1001 after the acks of their
        // publishes; a publish is answered within the publish timeout, so that bounds the wait.
        const deadline = Date.now() + DRAIN_MS
        const drained = server.stop(false)
        await realtime.goAway(DRAIN_MS)
        await Promise.race([drained, Bun.sleep(Math.max(0, deadline - Date.now()))])
        await app.stop(true)
        await ownIngest?.stop()
        await realtime.stop()
        await security.stop()
        subscriptions.stop()
        publishDenials.stop()
        limits.stop()
      })()),
  }
}
