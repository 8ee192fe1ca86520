import { jetstreamManager, type JetStreamManager, type StreamConfig } from '@nats-io/jetstream'
import { connect, nanos, type NatsConnection } from '@nats-io/transport-node'
import type { Config } from './config'
import { subjects } from './events'

/** Connects to NATS, reconnecting forever: a NATS restart is an outage, not a crash. */
export function connectNats(url: string, name: string): Promise<NatsConnection> {
  return connect({ servers: url, name, maxReconnectAttempts: -1, reconnectTimeWait: 250, pingInterval: 5000 })
}

/** Names of the streams and buckets one Fanfare deployment uses, derived from its config. */
export type Topology = {
  /** Events, subjects `<prefix>.ev.<partition>.<type>`. */
  eventStream: string
  /** Change notices (channel history), subjects `<prefix>.changes.<kind>.<name>`. */
  changeStream: string
  /** KV bucket of worker partition leases. */
  leaseBucket: string
  /** KV bucket of admin jobs (projection rebuilds), see core/rebuild-jobs.ts. */
  jobBucket: string
  prefix: string
  partitions: number
}

export function topology(config: Config): Topology {
  return {
    eventStream: config.FANFARE_STREAM,
    changeStream: `${config.FANFARE_STREAM}_CHANGES`,
    leaseBucket: `${config.FANFARE_STREAM}_leases`,
    jobBucket: `${config.FANFARE_STREAM}_jobs`,
    prefix: config.FANFARE_SUBJECT_PREFIX,
    partitions: config.FANFARE_PARTITIONS,
  }
}

/**
 * Creates or updates the event and change streams so they match the config. Safe to call from
 * every process at start, concurrently.
 */
export async function ensureStreams(nc: NatsConnection, config: Config): Promise<JetStreamManager> {
  const jsm = await jetstreamManager(nc)
  const t = topology(config)
  await upsertStream(jsm, {
    name: t.eventStream,
    subjects: [subjects.allEvents(t.prefix)],
    duplicate_window: nanos(config.FANFARE_DEDUP_WINDOW_MS),
    max_age: nanos(config.FANFARE_EVENT_RETENTION_MS),
  })
  await upsertStream(jsm, {
    name: t.changeStream,
    subjects: [subjects.allChanges(t.prefix)],
    max_msgs_per_subject: config.FANFARE_HISTORY_SIZE,
    max_age: nanos(config.FANFARE_HISTORY_TTL_MS),
    duplicate_window: nanos(Math.min(120_000, config.FANFARE_HISTORY_TTL_MS)),
  })
  return jsm
}

async function upsertStream(jsm: JetStreamManager, cfg: Partial<StreamConfig> & { name: string }) {
  try {
    await jsm.streams.info(cfg.name)
    await jsm.streams.update(cfg.name, cfg)
  } catch (err) {
    if (!isNotFound(err)) throw err
    try {
      await jsm.streams.add({ storage: 'file' as StreamConfig['storage'], ...cfg })
    } catch (addErr) {
      // Another process created it between our info and add.
      if (!String(addErr).includes('already in use')) throw addErr
    }
  }
}

export function isNotFound(err: unknown): boolean {
  return /not found/i.test(String((err as Error)?.message ?? err))
}
