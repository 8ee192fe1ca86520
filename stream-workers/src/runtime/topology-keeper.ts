import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import type { Config } from '../../../core/config'
import { openLeaseBucket } from '../../../core/leases'
import type { Logger } from '../../../core/logger'
import { deploymentStreams, ensureStreams, topology } from '../../../core/nats'
import { openJobBucket } from '../../../core/rebuild-jobs'
import { every } from '../../../core/backoff'

/**
 * Puts back the streams and buckets of the deployment when NATS has lost them (a NATS restarted
 * without its data volume): every `intervalMs` lists the streams and, if one is missing, creates
 * them all as at start. Without it nothing would: API nodes would answer 503 and workers retry
 * forever until a process restarts. Once they exist, runners apply the new event stream from its
 * start (see the checkpoint's stream identity), leases are taken again, and API nodes' change feeds
 * follow the new change streams. Returns a stop function.
 */
export function startTopologyKeeper(deps: { nc: NatsConnection; config: Config; logger: Logger; intervalMs?: number }): { stop: () => Promise<void> } {
  const expected = deploymentStreams(topology(deps.config))
  let jsm: JetStreamManager | undefined
  return every(
    deps.intervalMs ?? 2_000,
    async () => {
      jsm ??= await jetstreamManager(deps.nc, { checkAPI: false })
      const names = new Set<string>()
      for await (const name of jsm.streams.names()) names.add(name)
      const missing = expected.filter((n) => !names.has(n))
      if (missing.length === 0) return
      deps.logger.error({ missing }, 'NATS lost streams of this deployment (restarted without its data?): creating them again')
      await ensureStreams(deps.nc, deps.config)
      await openLeaseBucket(deps.nc, deps.config)
      await openJobBucket(deps.nc, deps.config)
    },
    // NATS down or busy: the next round looks again.
    (err) => deps.logger.debug({ err }, 'topology check failed'),
  )
}
