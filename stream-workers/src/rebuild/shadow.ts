import { getTableName, sql, type SQL } from 'drizzle-orm'
import { rowsOf, type Db, type Tx } from '../../../core/db/client'
import { changeOutbox, channelVersions, chatMessages, deadLetters, derivedScores, eventOutbox, leaderboardEntries, matches, polls, pollVotes, projectionCheckpoints, reactionDedup, reactionTotals, streams, streamViewers } from '../../../core/db/schema'
import { restartRunPayload } from '../../../core/restart-runs'
import { historyDeleteLock } from '../runtime/history-pruner'
import type { ProjectionName } from '../projections'

/**
 * The Postgres side of a rebuild: a shadow schema holding empty copies of a projection's read
 * tables (plus the bookkeeping tables the batch code writes), and the swap that puts them in place
 * of the live ones. Drizzle tables are unqualified, so a transaction that runs
 * `SET LOCAL search_path TO <shadow>, public` makes the unchanged projection code write into the
 * shadow, while config tables (leaderboards) still resolve to public.
 */

/**
 * What a rebuild replaces, per projection: its read tables and the channels it changes. A channel
 * kind may be changed by two projections (`stream:<id>`: its state by streams, its polls opening
 * and closing by polls); a rebuild of either gives all channels of the kind a new history (see
 * swapIn).
 */
export const rebuildTargets: Record<ProjectionName, { tables: string[]; channelPrefixes: string[] }> = {
  leaderboards: { tables: [getTableName(leaderboardEntries), getTableName(derivedScores)], channelPrefixes: ['leaderboard:'] },
  chat: { tables: [getTableName(chatMessages)], channelPrefixes: ['chat:'] },
  streams: { tables: [getTableName(streams), getTableName(streamViewers)], channelPrefixes: ['stream:'] },
  polls: { tables: [getTableName(polls), getTableName(pollVotes)], channelPrefixes: ['poll:', 'stream:'] },
  reactions: { tables: [getTableName(reactionTotals), getTableName(reactionDedup)], channelPrefixes: ['reactions:'] },
  // `user:<sub>` channels hold only join decisions, which only matches make.
  matches: { tables: [getTableName(matches)], channelPrefixes: ['match:', 'user:'] },
}

/**
 * Tables the batch code writes besides the read model. In the shadow they only absorb writes:
 * checkpoints track the shadow's own progress, versions are copied to public with a new epoch at
 * the switch, the shadow's dead letters replace the live ones of the positions it read (see
 * replaceDeadLetters), and its outboxes are dropped (the shadow's notices must never be published,
 * and the scores of matches it finishes again were scored when they first finished).
 */
const bookkeepingTables = [projectionCheckpoints, channelVersions, changeOutbox, eventOutbox, deadLetters].map((t) => getTableName(t))

const ident = (name: string) => {
  // Every identifier here is ours (fixed table names, generated schema names); check anyway.
  if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw new Error(`unsafe identifier ${JSON.stringify(name)}`)
  return name
}

/** The advisory lock that orders the start of a rebuild of `projection` against replays of its dead letters. */
const rebuildLockKey = (projection: ProjectionName) => sql`hashtext(${`fanfare.rebuild.${projection}`})`

/**
 * Inside a dead-letter replay's transaction, before it writes: the shadow schemas of `projection`
 * not yet switched in (a schema `rebuild_*` that holds its read tables; the switch moves them to
 * public, so a switched-in rebuild is not listed). A replay must not apply while there is one: the
 * switch would replace the live model, the replay's effect with it, and bring back the shadow's
 * dead letter of the event if the shadow had read it before the fix. The shared lock makes this
 * sound: a shadow is created under the exclusive lock (createShadow), so either the replay commits
 * before the shadow exists and reads anything, or the replay sees it.
 */
export async function rebuildsInProgress(tx: Tx, projection: ProjectionName): Promise<string[]> {
  const targets = rebuildTargets[projection]
  if (!targets) return []
  await tx.execute(sql`select pg_advisory_xact_lock_shared(${rebuildLockKey(projection)})`)
  const tables = sql.join(targets.tables.map((t) => sql`${t}`), sql`, `)
  const rows = await rowsOf<{ name: string }>(tx, sql`select distinct schemaname as name from pg_tables where schemaname like ${'rebuild\\_%'} and tablename in (${tables}) order by 1`)
  return rows.map((r) => r.name)
}

/** `rebuild_<job id>_<attempt>`: each attempt builds in its own schema, so a stale one cannot touch it. */
export const shadowSchemaName = (jobId: string, attempt: number) => ident(`rebuild_${jobId}_${attempt}`)
/** The schema a job's switch moves the replaced live tables to (see swapIn). */
export const retiredSchemaName = (jobId: string, attempt: number) => ident(`retired_${jobId}_${attempt}`)

/**
 * Creates `schema` with empty copies of the projection's read tables and the bookkeeping tables.
 * Constraints and indexes keep their public names (names are per schema), so the swapped-in
 * tables look exactly like the ones the migrations made.
 */
export async function createShadow(db: Db, schema: string, projection: ProjectionName): Promise<void> {
  await db.transaction(async (tx) => {
    // Waits for replays of the projection's dead letters in flight (see rebuildsInProgress).
    await tx.execute(sql`select pg_advisory_xact_lock(${rebuildLockKey(projection)})`)
    await tx.execute(sql.raw(`DROP SCHEMA IF EXISTS ${ident(schema)} CASCADE`))
    await tx.execute(sql.raw(`CREATE SCHEMA ${ident(schema)}`))
    for (const table of [...rebuildTargets[projection].tables, ...bookkeepingTables]) await copyTable(tx, schema, table)
  })
}

async function copyTable(tx: Tx, schema: string, table: string): Promise<void> {
  const target = `${ident(schema)}.${ident(table)}`
  // NOT NULL always comes along; defaults keep pointing at public's sequences, which is harmless.
  await tx.execute(sql.raw(`CREATE TABLE ${target} (LIKE public.${ident(table)} INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING IDENTITY INCLUDING STORAGE)`))
  const constraints = await rowsOf<{ name: string; def: string }>(
    tx,
    sql`select conname as name, pg_get_constraintdef(oid) as def from pg_constraint
        where conrelid = ${`public.${table}`}::regclass and contype in ('p', 'u', 'c', 'x') order by conname`,
  )
  for (const c of constraints) await tx.execute(sql.raw(`ALTER TABLE ${target} ADD CONSTRAINT "${c.name.replaceAll('"', '""')}" ${c.def}`))
  const indexes = await rowsOf<{ def: string }>(
    tx,
    sql`select pg_get_indexdef(i.indexrelid) as def from pg_index i
        where i.indrelid = ${`public.${table}`}::regclass
          and not exists (select 1 from pg_constraint c where c.conindid = i.indexrelid)`,
  )
  for (const { def } of indexes) {
    const moved = def.replace(new RegExp(` ON (ONLY )?(public\\.)?"?${table}"? `), ` ON $1${target} `)
    if (moved === def) throw new Error(`cannot re-target index definition: ${def}`)
    await tx.execute(sql.raw(moved))
  }
}

/**
 * Inside the switch transaction, before it locks any checkpoint row: takes the projection's live
 * read tables exclusively. A live batch statement locks the tables it writes before it reaches the
 * checkpoint row it waits on; taking the tables first keeps one lock order for both (the switch
 * would otherwise hold the checkpoint rows and wait for the tables: a deadlock). Live readers
 * wait until the switch commits, then read the rebuilt tables.
 */
export async function lockLiveTables(tx: Tx, projection: ProjectionName): Promise<void> {
  for (const table of rebuildTargets[projection].tables) await tx.execute(sql.raw(`LOCK TABLE public.${ident(table)} IN ACCESS EXCLUSIVE MODE`))
}

/**
 * Inside the switch transaction, before it locks the live tables: waits for a prune round under way
 * and keeps the next ones out (they skip while it is held) until the switch ends, so that swapIn
 * may delete the projection's channels' change_history rows (see there). Taken before the live
 * tables: waiting for it after them kept every snapshot and REST read of the projection waiting
 * on their ACCESS EXCLUSIVE locks for up to a prune round.
 */
export async function lockHistoryDeletes(tx: Tx): Promise<void> {
  await tx.execute(sql`select pg_advisory_xact_lock(${historyDeleteLock})`)
}

/** Inside a transaction: the projection code reads and writes the shadow schema from now on. */
export async function useShadow(tx: Tx, schema: string): Promise<void> {
  await tx.execute(sql.raw(`SET LOCAL search_path TO ${ident(schema)}, public`))
}

/**
 * Inside the switch transaction, after the shadow caught up: moves the live read tables to
 * `retired` and the shadow's into public, and replaces the versions of the projection's channels
 * with the shadow's under a new epoch each (the column default draws a fresh random one), so
 * subscribers re-sync instead of comparing versions of two histories. Every name is
 * schema-qualified: the transaction's search_path points at the shadow.
 *
 * A kind that another projection changes too (`stream:`) loses its rows as well: a channel the
 * shadow never changed is re-synced at version 0 and starts a new history at its next change (a
 * missing row is created with a new epoch), which only costs its subscribers a resync. That other projection's runners are not
 * stopped by the switch and lock version rows in channel order (see outboxWrite): the rows are
 * locked here in the same order first, so neither can hold one the other waits for (a deadlock).
 *
 * Live batches keep each channel's runs in change_history for resumes. Every run there of the
 * projection's channels is of an epoch the switch ends: a channel it drops has no history any more
 * (its snapshot is version 0, no epoch), one it keeps continues under a new epoch. API nodes serve
 * a resume only in the channel's current epoch (a client resuming with the old one gets a
 * snapshot), so those runs are never served again, and the pruner would keep a dropped channel's
 * for good (its rounds join the version row) and an unwritten channel's until its next full
 * round. The switch deletes them with the version rows it replaces, by the primary key's leading
 * column (channel).
 */
export async function swapIn(tx: Tx, opts: { shadow: string; retired: string; projection: ProjectionName }): Promise<void> {
  const { tables, channelPrefixes } = rebuildTargets[opts.projection]
  await tx.execute(sql.raw(`CREATE SCHEMA ${ident(opts.retired)}`))
  for (const table of tables) {
    await tx.execute(sql.raw(`ALTER TABLE public.${ident(table)} SET SCHEMA ${ident(opts.retired)}`))
    await tx.execute(sql.raw(`ALTER TABLE ${ident(opts.shadow)}.${ident(table)} SET SCHEMA public`))
  }
  const mine = sql.join(
    channelPrefixes.map((prefix) => sql`channel like ${`${prefix}%`}`),
    sql` or `,
  )
  await tx.execute(sql`select channel from public.channel_versions where ${mine} order by channel for update`)
  // Subscribers hold the replaced model's state, and the rebuilt one may differ (a dead letter it
  // applied after a fix, events it now refuses): a channel with no later change would keep that
  // state, unsaid. A restart run (see ChangeRun.restart), published by the outbox sweeper, makes
  // every node re-sync its subscribers now: at the channel's version in its new epoch, or, for a
  // channel the shadow never changed (no row: its snapshot is version 0, epoch ""), at 0 in no
  // epoch. A node that re-synced on a newer notice already ignores it.
  const shadowVersions = sql.raw(`${ident(opts.shadow)}.channel_versions`)
  const at = new Date()
  const restart = (channel: SQL, epoch: SQL, version: SQL) => restartRunPayload({ channel, epoch, version }, 'read model rebuilt', at)
  // The caller holds the lock of every delete of change_history (lockHistoryDeletes): a prune
  // round deleting rows of these channels in another order could deadlock with this one.
  // `= any(array(...))`: an index condition on the key's leading column whatever the planner
  // thinks of `gone`'s size (a join could hash a scan of the whole table).
  await tx.execute(
    sql`with gone as (delete from public.channel_versions where ${mine} returning channel),
        history as (delete from public.change_history where channel = any(array(select channel from gone)))
        insert into public.change_outbox (channel, epoch, version, payload)
        select channel, '', 0, ${restart(sql`channel`, sql`''`, sql`0`)}
        from gone where not exists (select 1 from ${shadowVersions} s where s.channel = gone.channel)
        on conflict do nothing`,
  )
  await tx.execute(sql.raw(`INSERT INTO public.channel_versions (channel, version) SELECT channel, version FROM ${ident(opts.shadow)}.channel_versions`))
  await tx.execute(
    sql`insert into public.change_outbox (channel, epoch, version, payload)
        select v.channel, v.epoch, v.version, ${restart(sql`v.channel`, sql`v.epoch`, sql`v.version`)}
        from public.channel_versions v join ${shadowVersions} s using (channel)`,
  )
}

/**
 * Inside the switch transaction, after swapIn: records on the retired schema (which the switch
 * creates) the position the rebuilt model took over at, so a switch whose COMMIT answer was lost
 * can be told from one that did not commit (see committedSwitch).
 */
export async function recordSwitch(tx: Tx, retired: string, switchedAtSeq: number): Promise<void> {
  await tx.execute(sql.raw(`COMMENT ON SCHEMA ${ident(retired)} IS 'switched at ${Math.trunc(switchedAtSeq)}'`))
}

/**
 * The position a switch that made `retired` took over at, if it committed (the schema exists only
 * then, see recordSwitch); undefined when it did not.
 */
export async function committedSwitch(db: Db | Tx, retired: string): Promise<number | undefined> {
  const [row] = await rowsOf<{ note: string | null }>(db, sql`select obj_description(oid, 'pg_namespace') as note from pg_namespace where nspname = ${retired}`)
  const seq = /^switched at (\d+)$/.exec(row?.note ?? '')?.[1]
  return seq === undefined ? undefined : Number(seq)
}

/**
 * The switch of job `jobId` that committed, at any attempt: its retired schema and the position it
 * took over at; undefined when none did. A worker that died after its switch committed, before the
 * job was saved `done`, left it; its takeover must not rebuild and switch again.
 */
export async function jobSwitch(db: Db, jobId: string): Promise<{ retired: string; switchedAtSeq: number } | undefined> {
  for (const s of await rebuildSchemas(db)) {
    if (s.jobId !== jobId || !s.retired) continue
    const seq = await committedSwitch(db, s.name)
    if (seq !== undefined) return { retired: s.name, switchedAtSeq: seq }
  }
  return undefined
}

/** Drops schemas left by a rebuild (after the switch committed, or after a failed attempt). */
export async function dropSchemas(db: Db, schemas: string[]): Promise<void> {
  for (const s of schemas) await db.execute(sql.raw(`DROP SCHEMA IF EXISTS ${ident(s)} CASCADE`))
}

/** A schema a rebuild made: `rebuild_<job id>_<attempt>` (its shadow) or `retired_<job id>_<attempt>` (the tables it replaced). */
export type RebuildSchema = { name: string; jobId: string; attempt: number; retired: boolean }

/** Every shadow and retired schema in the database, with the job and attempt its name carries. */
export async function rebuildSchemas(db: Db): Promise<RebuildSchema[]> {
  const rows = await rowsOf<{ name: string }>(db, sql`select nspname as name from pg_namespace where nspname like ${'rebuild\\_%'} or nspname like ${'retired\\_%'} order by 1`)
  return rows.flatMap(({ name }) => {
    const m = /^(rebuild|retired)_([a-z0-9]+)_(\d+)$/.exec(name)
    return m ? [{ name, jobId: m[2], attempt: Number(m[3]), retired: m[1] === 'retired' }] : []
  })
}

/**
 * Shadow and retired schemas of a job's attempts, of those below `below` only when given: what
 * earlier attempts left. A later attempt's are its own (a takeover of a worker that is slow).
 */
export async function leftoverSchemas(db: Db, jobId: string, below?: number): Promise<string[]> {
  const schemas = (await rebuildSchemas(db)).filter((s) => s.jobId === jobId && (below === undefined || s.attempt < below))
  return schemas.map((s) => s.name)
}

/**
 * First in the switch transaction: locks the projection's live dead letters. A dead-letter replay
 * holds its row, then writes the read tables and its checkpoint; taking the rows first keeps that
 * order here too (the switch then takes the tables and checkpoints), so neither can wait for the other.
 */
export async function lockDeadLetters(tx: Tx, projection: ProjectionName): Promise<void> {
  await tx.execute(sql`select id from public.dead_letters where projection = ${projection} order by id for update`)
}

/**
 * Inside the switch transaction: the projection's live dead letters of the stream positions the
 * shadow read (`fromSeq` to `toSeq`) give way to the shadow's. The shadow ran every one of those
 * messages through today's code: one it applied must not stay a dead letter (a replay would apply
 * it twice), one that still fails is a dead letter again, with today's reason. A live dead letter
 * whose message still fails keeps its id (and its first failure's time), so an admin told to
 * replay it after the switch (409 `rebuild_in_progress`) can use the id they have.
 */
export async function replaceDeadLetters(tx: Tx, opts: { shadow: string; projection: ProjectionName; fromSeq: number; toSeq: number }): Promise<void> {
  const { projection, fromSeq, toSeq } = opts
  const shadow = sql.raw(`${ident(opts.shadow)}.dead_letters`)
  // Of the projection, in the positions the shadow read; `t` is the table's alias.
  const read = (t: 'd' | 's') => sql`${sql.raw(t)}.projection = ${projection} and ${sql.raw(t)}.stream_seq between ${fromSeq} and ${toSeq}`
  await tx.execute(
    sql`delete from public.dead_letters d where ${read('d')}
        and not exists (select 1 from ${shadow} s where ${read('s')} and s.stream_seq = d.stream_seq)`,
  )
  await tx.execute(
    sql`update public.dead_letters d set partition = s.partition, subject = s.subject, event_id = s.event_id, reason = s.reason, payload = s.payload, stored_at = s.stored_at
        from ${shadow} s where ${read('d')} and ${read('s')} and s.stream_seq = d.stream_seq`,
  )
  await tx.execute(
    sql`insert into public.dead_letters (projection, partition, stream_seq, subject, event_id, reason, payload, created_at, stored_at)
        select projection, partition, stream_seq, subject, event_id, reason, payload, created_at, stored_at
        from ${shadow} s where ${read('s')}
        and not exists (select 1 from public.dead_letters d where ${read('d')} and d.stream_seq = s.stream_seq) order by id`,
  )
}
