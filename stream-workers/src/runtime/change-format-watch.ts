import type { JetStreamManager } from '@nats-io/jetstream'
import { every } from '../../../core/backoff'
import type { Config } from '../../../core/config'
import type { Logger } from '../../../core/logger'
import { changeFormatRecorded, LATEST_CHANGE_FORMAT, type ChangeFormat } from '../../../core/nats'

export type ChangeFormatWatch = {
  /** How runners publish change runs now (what the change streams record). */
  format: () => ChangeFormat
  stop: () => Promise<void>
}

const SAID: Record<ChangeFormat, string> = {
  runs: 'one message per channel run (a deployment from before live batches)',
  batches: 'live batches, not compressed',
  compressed: 'compressed live batches',
}

/**
 * Follows the change format the deployment's change streams record (core/nats.ts ChangeFormat):
 * `recorded` as read at start (readStreamSettings), then every `intervalMs` (seven stream infos),
 * so running workers take up `npm run migrate -- --live-batches` within an interval, without a
 * restart. A failed read keeps the last answer (NATS away: nothing is published then anyway).
 */
export function watchChangeFormat(deps: { jsm: JetStreamManager; config: Config; recorded: ChangeFormat; logger: Logger; intervalMs?: number }): ChangeFormatWatch {
  let format = deps.recorded
  if (format !== LATEST_CHANGE_FORMAT) {
    deps.logger.warn(
      { changes: format },
      `this deployment's change streams hold ${SAID[format]}: once every API node runs this version, \`npm run migrate -- --live-batches\` switches them to ${SAID[LATEST_CHANGE_FORMAT]} (cheaper fan-out)`,
    )
  }
  const watch = every(
    deps.intervalMs ?? 5_000,
    async () => {
      const now = await changeFormatRecorded(deps.jsm, deps.config)
      if (now !== format) deps.logger.info({ changes: now }, `the change streams now record ${SAID[now]}: publishing them`)
      format = now
    },
    (err) => deps.logger.debug({ err }, 'reading the change streams failed'),
  )
  return { format: () => format, stop: watch.stop }
}
