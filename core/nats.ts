import { jetstreamManager, type JetStreamManager, type StreamConfig, type StreamInfo } from '@nats-io/jetstream'
import { connect, nanos, type NatsConnection } from '@nats-io/transport-node'
import { channelKinds, type ChannelKind } from './channels'
import type { Config } from './config'
import { subjects } from './events'

/** Connects to NATS, reconnecting forever: a NATS restart is an outage, not a crash. */
export function connectNats(url: string, name: string): Promise<NatsConnection> {
  // noAsyncTraces: otherwise every request (each JetStream publish and ack wait) builds an Error
  // up front for its stack trace, ~6% of an API node's CPU at full ingest. Errors still say what
  // failed; they lose the caller's frames.
  return connect({ servers: url, name, maxReconnectAttempts: -1, reconnectTimeWait: 250, pingInterval: 5000, noAsyncTraces: true })
}

/** Names of the streams and buckets one Fanfare deployment uses, derived from its config. */
export type Topology = {
  /** Events, subjects `<prefix>.ev.<partition>.<type>`. */
  eventStream: string
  /**
   * Change notices (channel history), one stream per channel kind so each kind has its own
   * retention; subjects `<prefix>.changes.<kind>.<name>`.
   */
  changeStreams: Record<ChannelKind, string>
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
    changeStreams: {
      leaderboard: `${config.FANFARE_STREAM}_CHANGES_LEADERBOARD`,
      chat: `${config.FANFARE_STREAM}_CHANGES_CHAT`,
      user: `${config.FANFARE_STREAM}_CHANGES_USER`,
      stream: `${config.FANFARE_STREAM}_CHANGES_STREAM`,
      poll: `${config.FANFARE_STREAM}_CHANGES_POLL`,
      reactions: `${config.FANFARE_STREAM}_CHANGES_REACTIONS`,
      match: `${config.FANFARE_STREAM}_CHANGES_MATCH`,
    },
    leaseBucket: `${config.FANFARE_STREAM}_leases`,
    jobBucket: `${config.FANFARE_STREAM}_jobs`,
    prefix: config.FANFARE_SUBJECT_PREFIX,
    partitions: config.FANFARE_PARTITIONS,
  }
}

/** Every JetStream stream of a deployment: the event stream, the change streams, and the buckets' streams. */
export function deploymentStreams(t: Topology): string[] {
  return [t.eventStream, ...Object.values(t.changeStreams), `KV_${t.leaseBucket}`, `KV_${t.jobBucket}`]
}

/**
 * Built-in retention of kinds whose channels change often and whose snapshot is one small row: a
 * stream's channel changes up to once a second (viewer samples), a poll's once per batch while
 * votes come in. 300 runs still cover five minutes of a stream's changes (a reconnect resumes from
 * history); older gaps cost one cheap resync snapshot, not a day of per-second history per channel.
 */
const kindDefaults: Partial<Record<ChannelKind, { size: number; ttlMs: number }>> = {
  stream: { size: 300, ttlMs: 3600_000 },
  poll: { size: 300, ttlMs: 3600_000 },
}

/**
 * How many change runs (messages of one or more changes) a channel of this kind keeps, and for how
 * long: the kind's own variable (`FANFARE_HISTORY_SIZE_<KIND>`, `FANFARE_HISTORY_TTL_MS_<KIND>`),
 * else the kind's built-in default (see kindDefaults), else FANFARE_HISTORY_SIZE / _TTL_MS.
 */
export function historyRetention(config: Config, kind: ChannelKind): { size: number; ttlMs: number } {
  const own: Record<ChannelKind, [number | undefined, number | undefined]> = {
    leaderboard: [config.FANFARE_HISTORY_SIZE_LEADERBOARD, config.FANFARE_HISTORY_TTL_MS_LEADERBOARD],
    chat: [config.FANFARE_HISTORY_SIZE_CHAT, config.FANFARE_HISTORY_TTL_MS_CHAT],
    user: [undefined, undefined],
    stream: [config.FANFARE_HISTORY_SIZE_STREAM, config.FANFARE_HISTORY_TTL_MS_STREAM],
    poll: [config.FANFARE_HISTORY_SIZE_POLL, config.FANFARE_HISTORY_TTL_MS_POLL],
    reactions: [config.FANFARE_HISTORY_SIZE_REACTIONS, config.FANFARE_HISTORY_TTL_MS_REACTIONS],
    match: [undefined, undefined],
  }
  const [size, ttlMs] = own[kind]
  return { size: size ?? kindDefaults[kind]?.size ?? config.FANFARE_HISTORY_SIZE, ttlMs: ttlMs ?? kindDefaults[kind]?.ttlMs ?? config.FANFARE_HISTORY_TTL_MS }
}

/**
 * Which incarnation of a stream this is: `<name>@<created>`. A stream deleted and created again
 * (NATS lost its data, an operator removed it) has a new one, and its sequences restart at 1.
 */
export async function streamIdentity(jsm: JetStreamManager, stream: string): Promise<string> {
  return identityOf(await jsm.streams.info(stream))
}

/** The identity (see streamIdentity) of a stream whose info was read. */
export const identityOf = (info: StreamInfo): string => `${info.config.name}@${info.created}`

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
  // Before per-kind retention all notices shared one stream whose subjects overlap the new ones:
  // remove it (its history is lost; resuming clients get a resync snapshot, as for any lost history).
  await jsm.streams.delete(`${config.FANFARE_STREAM}_CHANGES`).catch((err) => {
    if (!isNotFound(err)) throw err
  })
  for (const kind of channelKinds) {
    const { size, ttlMs } = historyRetention(config, kind)
    await upsertStream(jsm, {
      name: t.changeStreams[kind],
      subjects: [subjects.changesOfKind(t.prefix, kind)],
      max_msgs_per_subject: size,
      max_age: nanos(ttlMs),
      duplicate_window: nanos(Math.min(120_000, ttlMs)),
    })
  }
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
