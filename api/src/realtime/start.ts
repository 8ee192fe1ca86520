import type { Server } from 'bun'
import type { NatsConnection } from '@nats-io/transport-node'
import type { Config } from '../../../core/config'
import type { Logger } from '../../../core/logger'
import { topology } from '../../../core/nats'
import type { Ingest } from '../modules/events/service'
import { startChangeFeed } from './change-feed'
import { createChannelHub, type Snapshot } from './channel-hub'
import { realtimeRoutes } from './index'

export type Realtime = {
  /** The `/v1/ws` route, given the app's ingest service (plug into createApp's `realtime`). */
  routes: (ctx: { ingest: Ingest }) => ReturnType<typeof realtimeRoutes>
  /** Gives the hub the listening server, whose `publish` reaches every socket of a topic. */
  bind: (server: Server<unknown>) => void
  stop: () => Promise<void>
}

/**
 * Starts this node's live side: follows the change stream and feeds the channel hub. Subscriptions
 * are only served once the feed is running, so no notice can fall between snapshot and feed.
 */
export async function startRealtime(deps: {
  config: Config
  nc: NatsConnection
  logger: Logger
  snapshot: (channel: string) => Promise<Snapshot>
  gapTimeoutMs?: number
}): Promise<Realtime> {
  const logger = deps.logger.child({ component: 'realtime' })
  let server: Server<unknown> | undefined
  const hub = createChannelHub({
    snapshot: deps.snapshot,
    publish: (topic, text) => void server?.publish(topic, text),
    gapTimeoutMs: deps.gapTimeoutMs ?? 5000,
    onError: (err, channel) => logger.error({ err, channel }, 'resync failed; retrying'),
  })
  const feed = await startChangeFeed({
    nc: deps.nc,
    stream: topology(deps.config).changeStream,
    logger,
    onNotice: (n) => hub.onNotice(n),
  })
  return {
    routes: ({ ingest }) => realtimeRoutes({ config: deps.config, hub, publish: ingest.publish, logger }),
    bind: (s) => void (server = s),
    stop: async () => {
      await feed.stop()
      hub.stop()
    },
  }
}
