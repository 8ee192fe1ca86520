import { DeliverPolicy, jetstream, jetstreamManager } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import { noticesOf, parseChannel, type ChangeNotice, type ChangeRun, type ChannelKind } from '../../../core/channels'
import { subjects } from '../../../core/events'
import { and, asc, eq, gte, lte, max, sql } from 'drizzle-orm'
import { alias } from 'drizzle-orm/pg-core'
import type { Db } from '../../../core/db/client'
import type { Config } from '../../../core/config'
import { historyRetention } from '../../../core/nats'
import { changeHistory } from '../../../core/db/schema'
import { runsOfData } from '../../../core/live-batches'

/** Reads the change notices of one channel still kept in the change stream, newer than `after`. */
export type HistoryReader = (channel: string, after: number) => Promise<ChangeNotice[]>

/** What the reader holds of one channel: every run read up to stream sequence `seq`, the newest ones. */
type Kept = { seq: number; runs: { notices: ChangeNotice[]; bytes: number }[]; notices: number; bytes: number }

/**
 * Reads a channel's history from its kind's change stream (one subject per channel, so one ordered
 * consumer with a single filter subject: fine on nats-server 2.9). The stream keeps the last
 * change runs per channel as configured for its kind (see historyRetention), shared by every API
 * node.
 *
 * A read goes forward from the oldest kept run (JetStream cannot read a subject backwards), so
 * reading a channel costs all its kept runs (up to FANFARE_HISTORY_SIZE), however few the client
 * missed. The reader therefore keeps what it read of each channel (the newest `keepNotices`
 * notices, at most `maxBytes` in all, the channels read least recently dropped first) and reads a
 * channel again only from the stream sequence after the last one it read: a stream only appends,
 * so nothing stored for the channel at or before that sequence is missing from what it kept. A
 * channel with no new run costs one direct get and no consumer. (Otherwise a resume one version
 * behind, unsubscribed and sent again, made a node read every kept run of a busy channel per
 * subscribe frame.) Notices are facts of a (channel, epoch, version): kept ones stay true, and a
 * stream recreated under the reader (sequences starting again) at worst leaves holes, which the
 * hub answers with a snapshot.
 *
 * Returns notices in stream order (not necessarily version order: two workers may publish one
 * channel's versions in either order); the caller sorts and checks contiguity.
 */
export function historyReader(deps: Parameters<typeof streamHistory>[0]): HistoryReader {
  const read = streamHistory(deps)
  return async (channel, after) => (await read(channel, after)).notices
}

/** What one place holds of a channel newer than `after`, and whether it holds the channel at all. */
type Found = { notices: ChangeNotice[]; known: boolean }

/** historyReader's read, saying also whether the stream holds any run of the channel. */
function streamHistory(deps: {
  nc: NatsConnection
  streams: Record<ChannelKind, string>
  prefix: string
  timeoutMs?: number
  /** Notices kept per channel (the newest): a resume replays at most MAX_REPLAY (1000). Default 2000. */
  keepNotices?: number
  /** Bytes of runs kept over all channels. Default 16 MiB. */
  maxBytes?: number
}): (channel: string, after: number) => Promise<Found> {
  const js = jetstream(deps.nc)
  const jsm = jetstreamManager(deps.nc, { checkAPI: false })
  const timeoutMs = deps.timeoutMs ?? 5_000
  const keepNotices = deps.keepNotices ?? 2000
  const maxBytes = deps.maxBytes ?? 16 * 1024 * 1024
  const kept = new Map<string, Kept>()
  let keptBytes = 0

  const forget = (channel: string) => {
    const k = kept.get(channel)
    if (!k) return
    keptBytes -= k.bytes
    kept.delete(channel)
  }
  /** Keeps a channel's read (if it reached further than what is kept), as the most recently used. */
  const keep = (channel: string, k: Kept) => {
    const was = kept.get(channel)
    forget(channel)
    if (was && was.seq > k.seq) k = was // a read that went further ended first
    while (k.runs.length > 1 && k.notices - k.runs[0].notices.length >= keepNotices) {
      const old = k.runs.shift()!
      k.notices -= old.notices.length
      k.bytes -= old.bytes
    }
    kept.set(channel, k)
    keptBytes += k.bytes
    for (const c of kept.keys()) {
      if (keptBytes <= maxBytes) break
      forget(c)
    }
  }

  return async (channel, after) => {
    const subject = subjects.change(deps.prefix, channel)
    const parsed = parseChannel(channel)
    if (!parsed) throw new Error(`not a channel: ${channel}`)
    const stream = deps.streams[parsed.kind]
    // The last stored sequence bounds the read: the consumer stops there instead of waiting for more.
    const last = await (await jsm).streams.getMessage(stream, { last_by_subj: subject })
    if (!last) {
      forget(channel)
      return { notices: [], known: false }
    }
    let from = kept.get(channel)
    // Sequences went back: the stream was recreated. What it kept then may be no guide to it now.
    if (from && from.seq > last.seq) from = undefined
    const runs = [...(from?.runs ?? [])]
    let seq = from?.seq ?? 0
    if (seq < last.seq) {
      const consumer = await js.consumers.get(
        stream,
        from ? { filter_subjects: subject, deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: from.seq + 1 } : { filter_subjects: subject, deliver_policy: DeliverPolicy.All },
      )
      // Deleted however the read ends (a timeout included): an ephemeral consumer left behind costs
      // the server until its inactivity threshold, and a reconnect storm would leave thousands.
      try {
        const deadline = Date.now() + timeoutMs
        for (;;) {
          if (Date.now() > deadline) throw new Error(`reading the history of ${channel} timed out`)
          let reached = false
          const batch = await consumer.fetch({ max_messages: 1000, expires: Math.max(1_000, deadline - Date.now()) })
          for await (const m of batch) {
            runs.push({ notices: runsOfData(m.data).flatMap(noticesOf), bytes: m.data.length })
            seq = m.seq
            if (m.seq >= last.seq) {
              reached = true
              break
            }
          }
          if (reached) break
        }
      } finally {
        await consumer.delete().catch(() => {})
      }
    }
    const out: ChangeNotice[] = []
    for (const r of runs) for (const n of r.notices) if (n.version > after) out.push(n)
    keep(channel, { seq, runs, notices: runs.reduce((n, r) => n + r.notices.length, 0), bytes: runs.reduce((n, r) => n + r.bytes, 0) })
    return { notices: out, known: true }
  }
}

/**
 * Reads a channel's history from Postgres (change_history: with live batches, the runs the
 * workers' batches committed, kept FANFARE_HISTORY_SIZE versions per channel): per epoch, the run
 * holding version `after + 1` and every later one, an indexed range of the primary key. Like the
 * stream's history, every epoch kept is read (the hub takes the notices of its own). Rows are
 * committed before their runs are published, so this may hold versions this node's feed has not
 * delivered yet (as a read of the change stream may): the hub replays the contiguous part and takes
 * the rest live. A run pruned away leaves the range starting past `after + 1`, which the hub
 * answers with a snapshot.
 *
 * What the kind keeps (historyRetention: the last `size` runs of a channel, for `ttlMs`) holds at
 * read time, as the change stream's limits do: a run the workers' pruner has not removed yet (it
 * runs every 10 s) is not served past them, so "the channel keeps 5" means 5 here too.
 *
 * Returns notices in version order per epoch.
 */
export function postgresHistoryReader(db: Db, config: Config, now: () => number = Date.now): HistoryReader {
  const read = postgresHistory(db, config, now)
  return async (channel, after) => (await read(channel, after)).notices
}

/** postgresHistoryReader's read, saying also whether change_history holds the channel (from the run holding `after` on). */
function postgresHistory(db: Db, config: Config, now: () => number): (channel: string, after: number) => Promise<Found> {
  return async (channel, after) => {
    const parsed = parseChannel(channel)
    if (!parsed) throw new Error(`not a channel: ${channel}`)
    const { size, ttlMs } = historyRetention(config, parsed.kind)
    const inner = alias(changeHistory, 'i')
    // Per epoch, the first version of the run holding `after + 1` (runs hold consecutive versions).
    const from = db
      .select({ v: max(inner.version) })
      .from(inner)
      .where(and(eq(inner.channel, changeHistory.channel), eq(inner.epoch, changeHistory.epoch), lte(inner.version, after + 1)))
    const rows = await db
      .select({ epoch: changeHistory.epoch, payload: changeHistory.payload, createdAt: changeHistory.createdAt })
      .from(changeHistory)
      .where(and(eq(changeHistory.channel, channel), gte(changeHistory.version, sql`coalesce((${from}), 0)`)))
      .orderBy(asc(changeHistory.epoch), asc(changeHistory.version))
    // Rows are every run from the one holding `after + 1` on, per epoch: past the newest `size` of
    // an epoch, or older than the TTL, they are not kept (the pruner's lag), and not served.
    const perEpoch = new Map<string, number>()
    for (const r of rows) perEpoch.set(r.epoch, (perEpoch.get(r.epoch) ?? 0) + 1)
    const oldest = now() - ttlMs
    const out: ChangeNotice[] = []
    for (const r of rows) {
      const left = perEpoch.get(r.epoch)!
      perEpoch.set(r.epoch, left - 1)
      if (left > size || new Date(r.createdAt).getTime() < oldest) continue
      for (const n of noticesOf(JSON.parse(r.payload) as ChangeRun)) if (n.version > after) out.push(n)
    }
    return { notices: out, known: rows.length > 0 }
  }
}

/**
 * A channel's history wherever the deployment keeps it: in Postgres (live batches, see
 * core/nats.ts ChangeFormat) or in its change stream (one message per run: a deployment from
 * before them; the outbox sweeper's late runs). The first place that holds the channel answers,
 * the other is asked only when it does not: across a switch of a running deployment a resume may
 * find the older runs in one place and the newer in the other, a hole the hub answers with a
 * snapshot, never a gap. Hubs ask Postgres first; an edge asks its mirrored change streams first
 * (they answer while it is cut off from the hub, Postgres may not). Without a database: the stream.
 */
export function deploymentHistoryReader(deps: { db?: Db; config: Config; stream: Parameters<typeof streamHistory>[0]; edge: boolean }): HistoryReader {
  const stream = streamHistory(deps.stream)
  if (!deps.db) return async (channel, after) => (await stream(channel, after)).notices
  const postgres = postgresHistory(deps.db, deps.config, Date.now)
  const places = deps.edge ? [stream, postgres] : [postgres, stream]
  return async (channel, after) => {
    const first = await places[0](channel, after)
    return first.known ? first.notices : (await places[1](channel, after)).notices
  }
}
