import { createApp } from './app'
import type { ApiDeps } from './deps'
import { startRealtime } from './realtime/start'
import { snapshotReader } from './realtime/snapshots'
import { startSecurity } from './auth/security'
import { createLimits } from './limits'

/** A listening API node. */
export type RunningApi = {
  /** The bound port (useful when config.PORT is 0). */
  port: number
  /** Stops accepting connections, closes open ones (WebSockets with "going away"), stops the feed. Safe to call twice. */
  stop: () => Promise<void>
}

/**
 * Starts an API node: follows the change stream for live updates, builds the app with REST and
 * WebSocket routes, and listens on config.HOST:config.PORT.
 */
export async function startApi(deps: Omit<ApiDeps, 'realtime' | 'security'>): Promise<RunningApi> {
  const security = await startSecurity(deps)
  const realtime = await startRealtime({ ...deps, security, snapshot: snapshotReader(deps.db) })
  const limits = createLimits({ config: deps.config })
  const app = createApp({ ...deps, security, realtime, limits })
  app.listen({ hostname: deps.config.HOST, port: deps.config.PORT })
  const server = app.server
  if (!server) throw new Error('the API server did not start')
  realtime.bind(server)
  const port = server.port ?? deps.config.PORT
  deps.logger.info({ host: deps.config.HOST, port }, 'api listening')
  let stopping: Promise<void> | undefined
  return {
    port,
    stop: () =>
      (stopping ??= (async () => {
        await realtime.goAway()
        await app.stop(true)
        await realtime.stop()
        await security.stop()
        limits.stop()
      })()),
  }
}
