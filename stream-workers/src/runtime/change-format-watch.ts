import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import { every } from '../../../core/backoff'
import type { Config } from '../../../core/config'
import type { Logger } from '../../../core/logger'
import { changeFormatRecorded, formatFollowed, LATEST_CHANGE_FORMAT, leastFormat, siteOf, type ChangeFormat } from '../../../core/nats'

export type ChangeFormatWatch = {
  /** How runners publish change runs now: what the change streams record, or less while an older API node follows them. */
  format: () => ChangeFormat
  stop: () => Promise<void>
}

const EDGE_TIMEOUT_MS = 1_000

const SAID: Record<ChangeFormat, string> = {
  runs: 'one message per channel run (a deployment from before live batches)',
  batches: 'live batches, not compressed',
  compressed: 'compressed live batches',
}

/**
 * Follows the change format to publish (core/nats.ts ChangeFormat): the one the deployment's
 * change streams record (`recorded` as read at start, then every `intervalMs`: seven stream
 * infos), so running workers take up `npm run migrate -- --live-batches` within an interval,
 * without a restart; and no more than the change feeds following those streams read (formatFollowed,
 * at the hub and at each edge site of FANFARE_EDGE_DOMAINS): an API node of the version before
 * compressed batches, started after the switch (a rollback), reads uncompressed batches until it
 * leaves, where it would have skipped every compressed one. Asked once before this returns, so a
 * worker starting beside such a node publishes nothing it cannot read. A failed read keeps that
 * place's last answer (NATS away: nothing is published then anyway; an edge cut off: its nodes as
 * last seen).
 */
export async function watchChangeFormat(deps: { nc: NatsConnection; jsm: JetStreamManager; config: Config; recorded: ChangeFormat; logger: Logger; intervalMs?: number }): Promise<ChangeFormatWatch> {
  let recorded = deps.recorded
  if (recorded !== LATEST_CHANGE_FORMAT) {
    deps.logger.warn(
      { changes: recorded },
      `this deployment's change streams hold ${SAID[recorded]}: once every API node runs this version, \`npm run migrate -- --live-batches\` switches them to ${SAID[LATEST_CHANGE_FORMAT]} (cheaper fan-out)`,
    )
  }
  const site = siteOf(deps.config)
  // An edge's feeds are asked across its leaf link, with a short timeout: a cut link must not hold
  // up a round (nor a worker's start or stop) for JetStream's default 5 s.
  const places = [
    { where: 'hub', jsm: Promise.resolve(deps.jsm) },
    ...(site.kind === 'hub' ? (site.edges ?? []) : []).map((domain) => ({ where: domain, jsm: jetstreamManager(deps.nc, { domain, checkAPI: false, timeout: EDGE_TIMEOUT_MS }) })),
  ]
  const followed = new Map<string, ChangeFormat | undefined>()
  const format = () => leastFormat([recorded, ...[...followed.values()].filter((f) => f !== undefined)])
  const readFollowers = () =>
    Promise.all(
      places.map(async ({ where, jsm }) => {
        try {
          followed.set(where, await formatFollowed(await jsm, deps.config))
        } catch (err) {
          deps.logger.debug({ err, where }, 'listing the change feeds failed')
        }
      }),
    )
  // What was last said about the format published (the log says each change of it once).
  let said = recorded
  const say = () => {
    const now = format()
    if (now === said) return
    said = now
    if (now === recorded) deps.logger.info({ changes: now }, `publishing ${SAID[now]}`)
    else {
      deps.logger.warn(
        { changes: now, recorded },
        `an API node of an earlier Fanfare follows the change streams and reads ${SAID[now]}, not ${SAID[recorded]}: publishing what it reads until it leaves`,
      )
    }
  }
  const round = async () => {
    const [now] = await Promise.all([changeFormatRecorded(deps.jsm, deps.config), readFollowers()])
    if (now !== recorded) deps.logger.info({ changes: now }, `the change streams now record ${SAID[now]}`)
    recorded = now
    say()
  }
  await readFollowers()
  say()
  const watch = every(deps.intervalMs ?? 5_000, round, (err) => deps.logger.debug({ err }, 'reading the change streams failed'))
  return { format, stop: watch.stop }
}
