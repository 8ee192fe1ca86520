import { sql } from 'drizzle-orm'
import { bigint, bigserial, index, integer, pgTable, primaryKey, text, timestamp } from 'drizzle-orm/pg-core'

/**
 * Where each projection is in each partition: the last applied stream sequence, written in the
 * same transaction as the read-model change. `fence` is the lease revision of the worker that
 * wrote it; a worker holding an older lease may no longer write.
 */
export const projectionCheckpoints = pgTable(
  'projection_checkpoints',
  {
    projection: text('projection').notNull(),
    partition: integer('partition').notNull(),
    seq: bigint('seq', { mode: 'number' }).notNull().default(0),
    fence: bigint('fence', { mode: 'number' }).notNull().default(0),
    /**
     * The event stream `seq` is a position in, as `<name>@<created>`. A stream recreated after NATS
     * lost its data numbers from 1 again: a checkpoint of the old stream must not skip those.
     * '' until a runner first records it.
     */
    stream: text('stream').notNull().default(''),
    /**
     * An earlier incarnation of the event stream (`<name>@<created>`) whose events this partition's
     * read model holds but the current stream does not: a rebuild would lose them. Set when a runner
     * moves the checkpoint to a recreated stream; cleared when a rebuild switches in a model of the
     * current stream alone. '' when the model comes only from the current stream.
     */
    lostStream: text('lost_stream').notNull().default(''),
    /**
     * A witness for retention (see core/retention-watch.ts): the stream sequence of an event of
     * this projection and partition seen stored and not yet applied (above `seq`), and when it was
     * stored. If the runner's consumer later delivers past it while the checkpoint is still below
     * it, retention removed it unapplied. Null when none was seen. Only set when it is above `seq`
     * and the previous witness is applied (at or below `seq`), so the oldest one is kept.
     */
    unappliedSeq: bigint('unapplied_seq', { mode: 'number' }),
    unappliedAt: timestamp('unapplied_at', { withTimezone: true }),
    /**
     * The last range of stream sequences (`expired_from`..`expired_to`) in which retention removed
     * events of this projection and partition before they were applied (at least one), and when a
     * runner found it. Null: never. Only the last range is kept: the log and
     * fanfare_projection_expired_unapplied_total have every one.
     */
    expiredFrom: bigint('expired_from', { mode: 'number' }),
    expiredTo: bigint('expired_to', { mode: 'number' }),
    expiredAt: timestamp('expired_at', { withTimezone: true }),
    updatedAt: timestamp('updated_at', { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [primaryKey({ columns: [t.projection, t.partition] })],
)

/** Messages that can never apply (schema-invalid, unknown type), kept for admins. */
export const deadLetters = pgTable(
  'dead_letters',
  {
    id: bigserial('id', { mode: 'number' }).primaryKey(),
    projection: text('projection').notNull(),
    partition: integer('partition').notNull(),
    streamSeq: bigint('stream_seq', { mode: 'number' }).notNull(),
    subject: text('subject').notNull(),
    eventId: text('event_id'),
    reason: text('reason').notNull(),
    payload: text('payload').notNull(),
    createdAt: timestamp('created_at', { withTimezone: true }).notNull().defaultNow(),
    /**
     * When JetStream stored the message: a replay applies it at this time, as its batch would have
     * (periods, match times and reaction windows go by it). Null in rows from before it was kept.
     */
    storedAt: timestamp('stored_at', { withTimezone: true }),
  },
  (t) => [index('dead_letters_created').on(t.createdAt)],
)

/**
 * Each channel's version: rises by exactly one per committed change of the channel. `epoch` names
 * the history those versions belong to: random when the row is created, replaced whenever the
 * history can no longer continue (a rebuild); versions are only comparable within one epoch.
 */
export const channelVersions = pgTable('channel_versions', {
  channel: text('channel').primaryKey(),
  version: bigint('version', { mode: 'number' }).notNull(),
  epoch: text('epoch')
    .notNull()
    .default(sql`substr(md5(random()::text || clock_timestamp()::text), 1, 8)`),
})

/**
 * The columns of a table of change runs, keyed by channel, epoch and first version. The outbox and
 * the history hold the same rows (the history outlives the publish), so they share one definition.
 */
function runColumns() {
  return {
    channel: text('channel').notNull(),
    epoch: text('epoch').notNull(),
    /** Version of the run's first change. */
    version: bigint('version', { mode: 'number' }).notNull(),
    payload: text('payload').notNull(),
    createdAt: timestamp('created_at', { withTimezone: true }).notNull().defaultNow(),
  }
}

/** A table of change runs: {@link runColumns}, its key, and an index `<name>_created` on `created_at`. */
function changeRunTable<N extends string>(name: N) {
  return pgTable(name, runColumns(), (t) => [
    primaryKey({ columns: [t.channel, t.epoch, t.version] }),
    index(`${name}_created`).on(t.createdAt),
  ])
}

/**
 * Change runs (see ChangeRun) committed with the changes and published to NATS after commit
 * (transactional outbox): a crash between commit and publish delays a run, never loses it. A row
 * is keyed by channel, epoch and first version; `payload` is the run's JSON, published as is.
 */
export const changeOutbox = changeRunTable('change_outbox')

/**
 * With live batches: every channel's recent change runs, written with the outbox rows in
 * the batch's statement and kept after they are published (the outbox rows are deleted then), so
 * a resume reads a channel's history here (an indexed range of one channel) instead of from a
 * per-channel subject of its change stream. Keyed like the outbox; the workers prune it to the last
 * FANFARE_HISTORY_SIZE versions per channel (and FANFARE_HISTORY_TTL_MS), per kind.
 */
export const changeHistory = changeRunTable('change_history')

/**
 * Per rebuild job, the attempt that may still write its shadow and switch it in: raised by each
 * attempt when it starts (KV claims count attempts up), and by the clean-up before it drops an
 * older attempt's shadow. Every transaction of a rebuild locks its job's row and checks it still
 * holds its own attempt, so a builder that was only slow when its job was taken over writes
 * nothing more, and its switch cannot commit next to its successor's (see
 * stream-workers/src/rebuild/fence.ts). One small row per job ever run.
 */
export const rebuildFences = pgTable('rebuild_fences', {
  jobId: text('job_id').primaryKey(),
  attempt: integer('attempt').notNull(),
  updatedAt: timestamp('updated_at', { withTimezone: true }).notNull().defaultNow(),
})
