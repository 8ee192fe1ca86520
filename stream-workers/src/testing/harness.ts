import { jetstream, jetstreamManager, type JetStreamClient, type PubAck } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import { noticesOf, type ChangeNotice, type ChangeRun } from '../../../core/channels'
import type { Config } from '../../../core/config'
import { connectBunSql, type Database, type Db } from '../../../core/db/client'
import { contracts, dedupIdOf, keyOf, partitionOf, subjects, type EventData, type EventType, type StoredEvent } from '../../../core/events'
import { createLogger } from '../../../core/logger'
import { runsOfData } from '../../../core/live-batches'
import { connectNats, ensureStreams, topology, type ChangeFormat } from '../../../core/nats'
import { createTestEnv, type TestEnv } from '../../../core/testing/env'
import { eq } from 'drizzle-orm'
import postgres from 'postgres'
import { leaderboardEntries } from '../../../core/db/schema'
import { until } from '../../../core/testing/wait'
import { parseConsumerName, projectionNames } from '../../../core/projections'
import { startWorkers, type Workers, type WorkersDeps } from '../workers'
import { HISTORY_DELETE_LOCK_KEY } from '../runtime/history-pruner'

/** One integration test's world: a fresh database and streams, and what it opened, to close. */
export type World = {
  env: TestEnv
  config: Config
  nc: NatsConnection
  js: JetStreamClient
  database: Database
  /** Starts a worker with its own database client and NATS connection, like a separate process. */
  startWorker: (extra?: Partial<WorkersDeps>) => Promise<Workers>
  close: () => Promise<void>
}

/** `changes`: a deployment of an older version, its change streams recording that format (core/nats.ts ChangeFormat). */
export async function createWorld(overrides: Record<string, string> = {}, opts: { changes?: ChangeFormat } = {}): Promise<World> {
  const env = await createTestEnv({ FANFARE_PARTITIONS: '2', FANFARE_LEASE_TTL_MS: '1500', ...overrides })
  const config = env.config
  const nc = await connectNats(env.vars.NATS_URL, 'sw-test')
  await ensureStreams(nc, config, opts)
  const database = await connectBunSql(env.vars.DATABASE_URL, { max: 2 })
  const opened: (() => Promise<void>)[] = []
  return {
    env,
    config,
    nc,
    js: jetstream(nc),
    database,
    startWorker: async (extra = {}) => {
      const workers = await startTestWorker(env, extra)
      opened.push(() => workers.stop())
      return workers
    },
    close: async () => {
      for (const close of opened) await close().catch(() => {})
      await database.close()
      await nc.close()
      await env.cleanup()
    },
  }
}

/**
 * A worker with its own database client and NATS connection, like a separate process. Its stop()
 * closes them and fails if a runner failed fatally meanwhile; calling it again returns the same.
 */
export async function startTestWorker(env: TestEnv, extra: Partial<WorkersDeps> = {}): Promise<Workers> {
  // The driver main uses (see connectBunSql).
  const db = await connectBunSql(env.vars.DATABASE_URL, { max: 4 })
  const nc = await connectNats(env.vars.NATS_URL, 'sw-test-worker')
  const fatal: unknown[] = []
  const workers = await startWorkers({
    config: env.config,
    db: db.db,
    nc,
    logger: createLogger(process.env.TEST_LOG_LEVEL ?? 'silent'),
    onFatal: (err) => fatal.push(err),
    ...extra,
  })
  const stop = workers.stop
  let stopped: Promise<void> | undefined
  workers.stop = () =>
    (stopped ??= (async () => {
      await stop()
      await nc.close()
      await db.close()
      if (fatal.length > 0) throw new Error(`a runner failed fatally: ${String(fatal[0])}`)
    })())
  return workers
}

let counter = 0

/** A stored event as the API would write it, published by `by` (default: the ingest token). */
export function storedEvent<T extends EventType>(type: T, data: EventData[T], id?: string, by = 'ingest'): StoredEvent {
  return { id: id ?? `ev-${Date.now().toString(36)}-${counter++}`, by, type, v: contracts[type].version, data, at: new Date().toISOString() } as StoredEvent
}

/** Publishes like the API: on its partition's subject, with `<by>/<id>` as msgID. */
export function publishEvent(w: World, event: StoredEvent): Promise<PubAck> {
  const p = partitionOf(keyOf(event), w.config.FANFARE_PARTITIONS)
  return w.js.publish(subjects.event(w.config.FANFARE_SUBJECT_PREFIX, p, event.type), JSON.stringify(event), { msgID: dedupIdOf(event) })
}


/**
 * Every change run on the change streams as published (with the size in bytes of the message that
 * carried it), in stream order within each channel kind; the runs of a live batch
 * (live batches) each in their message's place, in the message's order.
 */
export async function readRuns(w: World): Promise<(ChangeRun & { bytes: number })[]> {
  const jsm = await jetstreamManager(w.nc)
  const out: (ChangeRun & { bytes: number })[] = []
  for (const stream of Object.values(topology(w.config).changeStreams)) {
    const n = (await jsm.streams.info(stream)).state.messages
    if (n === 0) continue
    const consumer = await w.js.consumers.get(stream)
    for await (const m of await consumer.fetch({ max_messages: n, expires: 5_000 })) for (const run of runsOfData(m.data)) out.push({ ...run, bytes: m.data.length })
  }
  return out
}

/** Every notice of every change run on the change streams, in stream order within each channel kind. */
export async function readNotices(w: World): Promise<ChangeNotice[]> {
  return (await readRuns(w)).flatMap(({ bytes: _, ...run }) => noticesOf(run))
}

/** Notices grouped by channel, each in version order. */
export function byChannel(notices: ChangeNotice[]): Map<string, ChangeNotice[]> {
  const out = new Map<string, ChangeNotice[]>()
  for (const n of notices) out.set(n.channel, [...(out.get(n.channel) ?? []), n])
  for (const list of out.values()) list.sort((a, b) => a.version - b.version)
  return out
}

/**
 * Resolves once every projection has caught up with the stream: each partition of every projection
 * (all of projectionNames, as the workers run by default) has a consumer whose count, made by nats-server now, is 0 (nothing undelivered, nothing
 * unacked). Exact, unlike GET /admin/projections' lag (as of each worker's last delivery: an event
 * stored a moment ago may not be counted yet), which is why tests wait on this. It asks consumer
 * infos, which on nats-server before 2.9.15 slow a consumer with a backlog (core/projection-lag.ts):
 * tests only, and not in a test that measures a drain.
 */
export const untilCaughtUp = (deps: { config: Config; db: Db; nc: NatsConnection }, timeoutMs = 30_000) =>
  until(
    'projections to catch up',
    async () => {
      const t = topology(deps.config)
      const jsm = await jetstreamManager(deps.nc)
      const newest = new Map<string, { token: number; lag: number }>()
      for await (const c of jsm.consumers.list(t.eventStream)) {
        const parsed = c && parseConsumerName(c.name)
        if (!parsed) continue
        const key = `${parsed.projection}/${parsed.partition}`
        if ((newest.get(key)?.token ?? -1) < parsed.token) newest.set(key, { token: parsed.token, lag: c.num_pending + c.num_ack_pending })
      }
      for (const p of projectionNames) for (let n = 0; n < t.partitions; n++) if (newest.get(`${p}/${n}`)?.lag !== 0) return undefined
      return true
    },
    timeoutMs,
    100,
  )

/** untilCaughtUp for a World. */
export const caughtUp = (w: World, timeoutMs?: number) => untilCaughtUp({ config: w.config, db: w.database.db, nc: w.nc }, timeoutMs)

/** A board's scores by player, read from the read model. */
export const boardScores = async (w: World, board: string) =>
  Object.fromEntries(
    (await w.database.db.select().from(leaderboardEntries).where(eq(leaderboardEntries.board, board))).map((r) => [r.player, r.score]),
  )

/**
 * Runs `take` (a statement that locks something) in a transaction of a session of its own and
 * keeps that transaction open until `release` (safe to call twice), which then closes the session.
 */
async function holdInTransaction(w: World, take: (tx: postgres.TransactionSql) => Promise<unknown>) {
  const holder = postgres(w.env.vars.DATABASE_URL, { max: 1, onnotice: () => {} })
  let release!: () => void
  const released = new Promise<void>((resolve) => (release = resolve))
  let locked!: () => void
  const isLocked = new Promise<void>((resolve) => (locked = resolve))
  const holding = holder.begin(async (tx) => {
    await take(tx)
    locked()
    await released
  })
  await Promise.race([isLocked, holding])
  let ended: Promise<void> | undefined
  return {
    release: () =>
      (ended ??= (async () => {
        release()
        await holding
        await holder.end()
      })()),
  }
}

/**
 * Holds the lock every delete of change_history takes first (historyDeleteLock) from another
 * session until `release`, as a prune round under way does: rounds skip, a rebuild's switch waits.
 */
export const holdHistoryLock = (w: World) => holdInTransaction(w, (tx) => tx`select pg_advisory_xact_lock(hashtext(${HISTORY_DELETE_LOCK_KEY}))`)

/**
 * Holds `channel`'s version row from another session until `release`: a batch statement touching
 * the channel waits for it (`waiting` resolves once one does). `prober` is a third session, for
 * looking at the database meanwhile.
 */
export async function holdVersionRow(w: World, channel: string) {
  const held = await holdInTransaction(w, (tx) => tx`select version from channel_versions where channel = ${channel} for update`)
  const prober = postgres(w.env.vars.DATABASE_URL, { max: 1, onnotice: () => {} })
  let ended: Promise<void> | undefined
  return {
    prober,
    waiting: () =>
      until('a batch statement to wait for the version row', async () => {
        const [r] = await prober`select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'`.catch(() => [{ n: 0 }])
        return r.n > 0 || undefined
      }),
    /** Lets the row go and closes both sessions (safe to call twice). */
    release: () =>
      (ended ??= (async () => {
        await held.release()
        await prober.end()
      })()),
  }
}
