import type { JetStreamManager } from '@nats-io/jetstream'
import { every } from '../../../core/backoff'
import type { Config } from '../../../core/config'
import type { Logger } from '../../../core/logger'
import { liveBatchesRecorded } from '../../../core/nats'

export type LiveBatchesWatch = {
  /** Whether runners publish live batches now (what the change streams record). */
  on: () => boolean
  stop: () => Promise<void>
}

/**
 * Follows how the deployment's change streams say runs are published (core/nats.ts
 * recordsLiveBatches): `recorded` as read at start (readStreamSettings), then every `intervalMs`
 * (seven stream infos), so running workers take up `npm run migrate -- --live-batches` within an
 * interval, without a restart. A failed read keeps the last answer (NATS away: nothing is
 * published then anyway).
 */
export function watchLiveBatches(deps: { jsm: JetStreamManager; config: Config; recorded: boolean; logger: Logger; intervalMs?: number }): LiveBatchesWatch {
  let on = deps.recorded
  if (!on) {
    deps.logger.warn(
      "this deployment's change streams hold one message per channel run (a deployment from before live batches): once every API node runs this version, `npm run migrate -- --live-batches` switches them (cheaper fan-out)",
    )
  }
  const watch = every(
    deps.intervalMs ?? 5_000,
    async () => {
      const now = await liveBatchesRecorded(deps.jsm, deps.config)
      if (now !== on) deps.logger.info({ liveBatches: now }, now ? 'the change streams now record live batches: publishing them' : 'the change streams no longer record live batches: publishing one message per run')
      on = now
    },
    (err) => deps.logger.debug({ err }, 'reading the change streams failed'),
  )
  return { on: () => on, stop: watch.stop }
}
