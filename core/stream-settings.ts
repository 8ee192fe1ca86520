import type { JetStreamManager, StreamConfig } from '@nats-io/jetstream'
import { millis } from '@nats-io/transport-node'
import { channelKinds } from './channels'
import type { Config } from './config'
import type { Logger } from './logger'
import { changeFormatOf, historyRetention, historyVariables, leastFormat, siteOf, topology, type ChangeFormat } from './nats'

/**
 * A setting of the shared streams on which this process's config differs from the stream: the
 * variable, the config's value and the stream's. Only `npm run migrate` changes the streams' settings
 * (see ensureStreams): the process works with the stream's.
 */
export type SettingDrift = { variable: string; stream: string; configured: number | string; actual: number | string }

const sourcesOf = (cfg: StreamConfig): string => (cfg.sources ?? []).map((s) => s.external?.api?.split('.')[1] ?? s.name).sort().join(',')

/**
 * Reads the deployment's streams (after ensureStreams) and returns `config` with the settings a
 * process tells clients or relies on taken from the event stream as it is: FANFARE_DEDUP_WINDOW_MS
 * (its duplicate_window: the `authed` frame's dedupWindowMs, reaction batches) and
 * FANFARE_EVENT_RETENTION_MS (its max_age: the retention watch and runners' expiry checks). Each
 * setting on which the config differs from a stream (those two, FANFARE_REPLICAS, the hub's
 * FANFARE_EDGE_DOMAINS, each kind's history size and age) is logged as one warning, naming the
 * variable and both values: `npm run migrate` applies the config's. Read at start: after
 * `npm run migrate` changes a setting, restart the nodes (README "Upgrading").
 *
 * Also says the deployment's change format (core/nats.ts changeFormatRecorded, from the same
 * stream infos): a worker's first answer (see watchChangeFormat), without reading them again.
 */
export async function readStreamSettings(jsm: JetStreamManager, config: Config, logger: Logger): Promise<{ config: Config; changes: ChangeFormat }> {
  const t = topology(config)
  const site = siteOf(config)
  const events = (await jsm.streams.info(t.eventStream)).config
  const drift: SettingDrift[] = []
  const compare = (variable: string, stream: string, configured: number | string, actual: number | string) => {
    if (configured !== actual && !drift.some((d) => d.variable === variable)) drift.push({ variable, stream, configured, actual })
  }
  const dedupWindowMs = millis(events.duplicate_window ?? 0)
  const retentionMs = millis(events.max_age ?? 0)
  compare('FANFARE_DEDUP_WINDOW_MS', t.eventStream, config.FANFARE_DEDUP_WINDOW_MS, dedupWindowMs)
  compare('FANFARE_EVENT_RETENTION_MS', t.eventStream, config.FANFARE_EVENT_RETENTION_MS, retentionMs)
  compare('FANFARE_REPLICAS', t.eventStream, config.FANFARE_REPLICAS, events.num_replicas)
  if (site.kind === 'hub' && site.edges) compare('FANFARE_EDGE_DOMAINS', t.eventStream, [...site.edges].sort().join(','), sourcesOf(events))
  // One request per kind, in parallel: this runs at every node's start.
  const changeStreams = await Promise.all(channelKinds.map(async (kind) => [kind, (await jsm.streams.info(t.changeStreams[kind])).config] as const))
  for (const [kind, changes] of changeStreams) {
    const { size, ttlMs } = historyRetention(config, kind)
    const variables = historyVariables(kind)
    compare(variables.size, changes.name, size, changes.max_msgs_per_subject)
    compare(variables.ttlMs, changes.name, ttlMs, millis(changes.max_age ?? 0))
    compare('FANFARE_REPLICAS', changes.name, config.FANFARE_REPLICAS, changes.num_replicas)
  }
  for (const d of drift) {
    logger.warn(
      { variable: d.variable, stream: d.stream, configured: d.configured, actual: d.actual },
      `${d.variable} is ${d.configured} here but stream ${d.stream} has ${d.actual}: this process uses the stream's ${d.actual}; \`npm run migrate\` (with this config) applies ${d.configured} to the streams`,
    )
  }
  return {
    config: { ...config, FANFARE_DEDUP_WINDOW_MS: dedupWindowMs, FANFARE_EVENT_RETENTION_MS: retentionMs },
    changes: leastFormat(changeStreams.map(([, changes]) => changeFormatOf(changes.description))),
  }
}
