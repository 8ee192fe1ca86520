import { afterEach, describe, expect, test } from 'bun:test'
import { DeliverPolicy, jetstream } from '@nats-io/jetstream'
import postgres from 'postgres'
import { setDatabaseDefault } from '../../core/testing/database'
import { proxyDatabase } from '../../core/testing/tcp-proxy'
import { Kvm } from '@nats-io/kv'
import { asc, sql } from 'drizzle-orm'
import { createHarness, waitRebuild, type ApiHarness } from '../../api/src/test-support'
import { connectBunSql, rowsOf } from '../../core/db/client'
import { channelVersions, chatMessages, deadLetters, leaderboardEntries, leaderboards, projectionCheckpoints } from '../../core/db/schema'
import { createLogger } from '../../core/logger'
import { connectNats, ensureStreams, streamIdentity, topology } from '../../core/nats'
import { projectionNames } from '../../core/projections'
import { rebuildKey, type RebuildJob } from '../../core/rebuild-jobs'
import { until } from '../../core/testing/wait'
import { startTestWorker, untilCaughtUp } from '../../stream-workers/src/testing/harness'
import type { Workers } from '../../stream-workers/src/workers'
import { leaderboardsProjection } from '../../stream-workers/src/projections/leaderboards/apply'
import { runRebuild, type RebuildDeps } from '../../stream-workers/src/rebuild/rebuild'
import { RebuildTakenOver } from '../../stream-workers/src/rebuild/fence'
import { startRebuildJobs } from '../../stream-workers/src/rebuild/jobs'
import { createShadow } from '../../stream-workers/src/rebuild/shadow'
import type { Projection } from '../../stream-workers/src/projections/types'
import { projections } from '../../stream-workers/src/projections'
import { keyOf, partitionOf } from '../../core/events'
import { runsOfData } from '../../core/live-batches'

let h: ApiHarness | undefined
let closers: (() => Promise<void>)[] = []
afterEach(async () => {
  for (const close of closers) await close().catch(() => {})
  closers = []
  await h?.close()
  h = undefined
})

/** A worker with its own connections, like a separate process, stopped after the test. */
async function startWorker(h: ApiHarness): Promise<Workers> {
  const w = await startTestWorker(h.env)
  closers.push(() => w.stop())
  return w
}

const caughtUp = (h: ApiHarness) => untilCaughtUp({ config: h.env.config, db: h.database.db, nc: h.nc })

type Sent = { id: string; type: string; data: any; seq: number }

/**
 * The read models an oracle computes from the acknowledged events, in stream order. `configured`:
 * boards whose rules an admin set before their first score, which restarted their channels at
 * version 1 (see putBoardConfig); a rebuild's channels count the events' changes alone.
 */
function oracle(events: Sent[], operators: Record<string, 'best' | 'latest' | 'sum'>, configured: string[] = []) {
  const entries = new Map<string, { board: string; player: string; score: number; reachedSeq: number }>()
  const messages = new Map<string, { id: string; room: string; user: string; text: string; seq: number; deleted: boolean }>()
  const versions = new Map<string, number>(configured.map((board) => [`leaderboard:${board}`, 1]))
  const bump = (channel: string) => versions.set(channel, (versions.get(channel) ?? 0) + 1)
  for (const e of [...events].sort((a, b) => a.seq - b.seq)) {
    if (e.type === 'score.submitted') {
      const { board, player, score } = e.data
      const key = `${board}/${player}`
      const cur = entries.get(key)
      const op = operators[board] ?? 'best'
      let next = cur
      if (!cur) next = { board, player, score, reachedSeq: e.seq }
      else if (op === 'sum' && score !== 0) next = { ...cur, score: cur.score + score, reachedSeq: e.seq }
      else if (op === 'latest') next = { ...cur, score, reachedSeq: e.seq }
      else if (op === 'best' && score > cur.score) next = { ...cur, score, reachedSeq: e.seq }
      if (next !== cur) {
        entries.set(key, next!)
        bump(`leaderboard:${board}`)
      }
    } else if (e.type === 'chat.message.posted') {
      if (messages.has(e.id)) continue
      messages.set(e.id, { id: e.id, room: e.data.room, user: e.data.user, text: e.data.text, seq: e.seq, deleted: false })
      bump(`chat:${e.data.room}`)
    } else if (e.type === 'chat.message.deleted') {
      const m = messages.get(e.data.messageId)
      if (!m || m.deleted || m.room !== e.data.room) continue
      m.deleted = true
      bump(`chat:${e.data.room}`)
    }
  }
  const byKey = <T>(rows: T[], key: (r: T) => string) => rows.sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0))
  return {
    entries: byKey([...entries.values()], (r) => `${r.board}/${r.player}`),
    messages: byKey([...messages.values()], (r) => r.id),
    versions: Object.fromEntries([...versions].sort()),
  }
}

/**
 * The read models equal the oracle's: entries, messages (their postedAt aside) and channel versions.
 * `ignoreSeq` leaves stream sequences out too (events of two streams that both number from 1).
 */
function expectModels(actual: Awaited<ReturnType<typeof readModels>>, expected: ReturnType<typeof oracle>, opts: { ignoreSeq?: boolean } = {}) {
  const strip = (rows: object[]) =>
    rows.map((row) => {
      const { postedAt: _, ...rest } = row as Record<string, unknown>
      if (opts.ignoreSeq) {
        delete rest.seq
        delete rest.reachedSeq
      }
      return rest
    })
  expect(strip(actual.entries)).toEqual(strip(expected.entries))
  expect(strip(actual.messages)).toEqual(strip(expected.messages))
  expect(actual.versions).toEqual(expected.versions)
}

async function readModels(h: ApiHarness) {
  const db = h.database.db
  const entries = (await db.select().from(leaderboardEntries)).map((r) => ({ board: r.board, player: r.player, score: r.score, reachedSeq: Number(r.reachedSeq) }))
  entries.sort((a, b) => (`${a.board}/${a.player}` < `${b.board}/${b.player}` ? -1 : 1))
  const messages = (await db.select().from(chatMessages).orderBy(asc(chatMessages.id))).map((r) => ({
    id: r.id,
    room: r.room,
    user: r.user,
    text: r.text,
    seq: Number(r.seq),
    deleted: r.deleted,
    postedAt: r.postedAt.toISOString(),
  }))
  const versionRows = await db.select().from(channelVersions).orderBy(asc(channelVersions.channel))
  return {
    entries,
    messages,
    versions: Object.fromEntries(versionRows.map((r) => [r.channel, Number(r.version)])),
    epochs: Object.fromEntries(versionRows.map((r) => [r.channel, r.epoch])),
  }
}

const boards = { tot: 'sum', last: 'latest', hi: 'best' } as const
const rooms = ['lobby', 'arena', 'help']
let counter = 0

/** Sends a batch of random scores and chat posts through the API; returns them with their stream sequences. */
async function sendBatch(h: ApiHarness, n: number): Promise<Sent[]> {
  const events = Array.from({ length: n }, () => {
    const i = counter++
    if (i % 5 === 4) {
      return { id: `m${i}`, type: 'chat.message.posted', data: { room: rooms[i % 3], user: `u${i % 7}`, text: `hello ${i}` } }
    }
    const board = Object.keys(boards)[i % 3]
    return { id: `s${i}`, type: 'score.submitted', data: { board, player: `p${(i * 7) % 40}`, score: 1 + ((i * 31) % 97) } }
  })
  const r = await h.call('POST', '/v1/events', { token: h.ingestToken, body: { events } })
  expect(r.status).toBe(202)
  return events.map((e, k) => ({ ...e, seq: r.json.results[k].seq }))
}

async function deleteMessage(h: ApiHarness, room: string, id: string): Promise<Sent> {
  const r = await h.call('DELETE', `/admin/rooms/${room}/messages/${id}`, { token: h.adminToken })
  expect(r.status).toBe(202)
  return { id: r.json.results[0].id, type: 'chat.message.deleted', data: { room, messageId: id }, seq: r.json.results[0].seq }
}

/**
 * The channels of the leaderboards' restart runs a rebuild's switch wrote ('read model rebuilt'),
 * as the outbox sweeper published them, sorted: once every board's is out and a little more (a
 * second one would show then).
 */
async function restartRuns(h: ApiHarness): Promise<string[]> {
  const runs = async () => {
    const c = await jetstream(h.nc).consumers.get(topology(h.env.config).changeStreams.leaderboard, { deliver_policy: DeliverPolicy.All })
    const out: string[] = []
    for await (const m of await c.fetch({ max_messages: 10_000, expires: 1000 })) {
      for (const run of runsOfData(m.data)) if (run.restart === 'read model rebuilt') out.push(run.channel)
    }
    return out.sort()
  }
  await until('the restart runs published', async () => (await runs()).length >= Object.keys(boards).length, 20_000, 200)
  await Bun.sleep(2000)
  return runs()
}

/**
 * Leaderboards with a write Postgres refuses for player `bomb`'s scores (22P02, invalid input for
 * type integer), as a projection whose code lets through a value Postgres cannot store.
 */
const refusing: Projection = {
  ...leaderboardsProjection,
  apply: async (db, events) => {
    const applied = await leaderboardsProjection.apply(db, events)
    const hit = events.some((e) => (e.event.data as { player?: string }).player === 'bomb')
    if (!hit || !applied.write) return applied
    const write = applied.write
    return { ...applied, write: (when) => [...[write(when)].flat(), sql`update ${leaderboards} set board = board where board = ('bomb'::text::int)::text and ${when}`] }
  },
}

/** Sends player `bomb`'s score through the API; returns its event id and stream sequence. */
async function sendBomb(h: ApiHarness): Promise<{ id: string; seq: number }> {
  const r = await h.call('POST', '/v1/events', { token: h.ingestToken, body: { type: 'score.submitted', data: { board: 'hi', player: 'bomb', score: 50 } } })
  expect(r.status).toBe(202)
  return { id: r.json.results[0].id, seq: r.json.results[0].seq }
}

/** The start of most tests here: a harness on two partitions, a worker, and `n` events sent (500 a request) and applied. */
async function withApplied(n: number, overrides: Record<string, string> = {}): Promise<{ hh: ApiHarness; sent: Sent[] }> {
  h = await createHarness({ FANFARE_PARTITIONS: '2', FANFARE_LEASE_TTL_MS: '1500', ...overrides })
  const hh = h
  await startWorker(hh)
  const sent: Sent[] = []
  for (let i = 0; i < n; i += 500) sent.push(...(await sendBatch(hh, Math.min(500, n - i))))
  await caughtUp(hh)
  return { hh, sent }
}

/**
 * What runRebuild needs, on a Postgres client of its own (at `databaseUrl`, by default the
 * harness's; closed after the test), like a worker of its own: the leaderboards projection, a
 * silent logger and no progress report unless `deps` says otherwise.
 */
async function rebuildDeps(hh: ApiHarness, deps: Partial<RebuildDeps> & { databaseUrl?: string } = {}): Promise<RebuildDeps> {
  const { databaseUrl, ...rest } = deps
  const db = await connectBunSql(databaseUrl ?? hh.env.vars.DATABASE_URL, { max: 2 })
  closers.push(() => db.close())
  return {
    config: hh.env.config,
    db: db.db,
    js: jetstream(hh.nc),
    logger: createLogger('silent'),
    projection: leaderboardsProjection,
    progress: async () => {},
    signal: new AbortController().signal,
    ...rest,
  }
}

/** A logger that keeps its JSON lines, and how many of them carry message `msg`. */
function keptLog() {
  const lines: string[] = []
  const logger = createLogger('info', {}, { output: { write: (l: string) => void lines.push(l) }, format: 'json' })
  const logged = (msg: string) => lines.filter((l) => (JSON.parse(l) as { msg: string }).msg === msg).length
  return { lines, logger, logged }
}

/** After a rebuild: live goes on from the switched checkpoints, the model is exact, each channel re-synced once. */
async function expectOneSwitch(hh: ApiHarness, sent: Sent[]) {
  sent.push(...(await sendBatch(hh, 10)))
  await caughtUp(hh)
  expectModels(await readModels(hh), oracle(sent, {}))
  // One restart run per rebuilt channel, published by the outbox sweeper.
  expect(await restartRuns(hh)).toEqual(Object.keys(boards).map((b) => `leaderboard:${b}`).sort())
}

/** The rebuilds' shadow and retired schemas in the database, sorted. */
const schemas = async (hh: ApiHarness) =>
  [...((await hh.database.db.execute(sql`select nspname from pg_namespace where nspname like 'rebuild\\_%' or nspname like 'retired\\_%' order by 1`)) as unknown as { nspname: string }[])].map((r) => r.nspname)

describe('POST /admin/projections/:name/rebuild', () => {
  test('a rebuild while events keep flowing ends equal to the model computed from the events, with new epochs', async () => {
    h = await createHarness({ FANFARE_PARTITIONS: '4', FANFARE_LEASE_TTL_MS: '1500', FANFARE_BATCH_SIZE: '100' })
    const hh = h
    for (const [board, operator] of Object.entries(boards)) {
      expect((await hh.call('PUT', `/admin/leaderboards/${board}`, { token: hh.adminToken, body: { operator } })).status).toBe(200)
    }
    await startWorker(hh)
    await startWorker(hh)
    const sent: Sent[] = []
    for (let i = 0; i < 4; i++) sent.push(...(await sendBatch(hh, 500)))
    const posted = sent.filter((e) => e.type === 'chat.message.posted')
    for (const m of posted.slice(0, 20)) sent.push(await deleteMessage(hh, m.data.room, m.id))
    await caughtUp(hh)
    const before = await readModels(hh)
    const control = oracle(sent, boards, Object.keys(boards))
    expectModels(before, control)

    // Traffic keeps flowing during the whole rebuild, deletions of older messages included.
    let flowing = true
    const traffic = (async () => {
      let k = 20
      while (flowing) {
        sent.push(...(await sendBatch(hh, 100)))
        if (k < posted.length) sent.push(await deleteMessage(hh, posted[k].data.room, posted[k++].id))
        await Bun.sleep(50)
      }
    })()

    // A failing test must not leave the sender running into the next one.
    closers.unshift(async () => {
      flowing = false
      await traffic.catch(() => {})
    })

    const lb = await hh.call('POST', '/admin/projections/leaderboards/rebuild', { token: hh.adminToken })
    expect(lb.status).toBe(202)
    expect(lb.json).toMatchObject({ projection: 'leaderboards', state: 'requested' })
    const again = await hh.call('POST', '/admin/projections/leaderboards/rebuild', { token: hh.adminToken })
    expect(again.status).toBe(409)
    expect(again.json.error).toMatchObject({ code: 'rebuild_in_progress', details: { id: lb.json.id } })
    const chat = await hh.call('POST', '/admin/projections/chat/rebuild', { token: hh.adminToken })
    expect(chat.status).toBe(202)

    const lbDone = await waitRebuild(hh, 'leaderboards', 'done')
    const chatDone = await waitRebuild(hh, 'chat', 'done')
    expect(lbDone).toMatchObject({ id: lb.json.id })
    expect(lbDone.switchedAtSeq).toBeGreaterThan(0)
    expect(chatDone.switchedAtSeq).toBeGreaterThan(0)
    // Some traffic after the switch too.
    sent.push(...(await sendBatch(hh, 100)))
    flowing = false
    await traffic
    sent.push(...(await sendBatch(hh, 100)))

    await caughtUp(hh)
    const after = await readModels(hh)
    const expected = oracle(sent, boards)
    // Versions count every change exactly once: nothing was applied twice or skipped at the switch.
    expectModels(after, expected)
    // Rows that existed before keep their content (postedAt included).
    const afterById = new Map(after.messages.map((m) => [m.id, m]))
    for (const m of before.messages) expect(afterById.get(m.id)?.postedAt).toBe(m.postedAt)
    // Every rebuilt channel continues under a new epoch.
    for (const channel of Object.keys(before.epochs)) expect([channel, after.epochs[channel]]).not.toEqual([channel, before.epochs[channel]])

    // Nothing of the shadow is left behind.
    // The job's schemas are dropped just after it is saved done (a takeover needs the retired one until then).
    await until('no rebuild or retired schema left', async () => {
      const schemas = await hh.database.db.execute(sql`select nspname from pg_namespace where nspname like 'rebuild\\_%' or nspname like 'retired\\_%'`)
      return [...(schemas as unknown as unknown[])].length === 0
    })
  }, 60_000)

  test('auth, unknown projection, no job yet, in progress, and history_incomplete unless forced', async () => {
    h = await createHarness()
    const hh = h
    const path = '/admin/projections/leaderboards/rebuild'
    for (const method of ['POST', 'GET']) {
      expect((await hh.call(method, path)).status).toBe(401)
      const ingest = await hh.call(method, path, { token: hh.ingestToken })
      expect([ingest.status, ingest.json.error.code]).toEqual([403, 'forbidden'])
      const unknown = await hh.call(method, '/admin/projections/nope/rebuild', { token: hh.adminToken })
      expect([unknown.status, unknown.json.error.code]).toEqual([404, 'unknown_projection'])
    }
    const none = await hh.call('GET', path, { token: hh.adminToken })
    expect([none.status, none.json.error.code]).toEqual([404, 'no_rebuild'])
    expect((await hh.call('GET', '/admin/rebuilds', { token: hh.adminToken })).json).toEqual({ jobs: [] })
    expect((await hh.call('GET', '/admin/rebuilds', { token: hh.ingestToken })).status).toBe(403)

    // Retention removed the first events: a rebuild could only be partial.
    await sendBatch(hh, 3)
    await hh.jsm.streams.purge(topology(hh.env.config).eventStream)
    const partial = await hh.call('POST', path, { token: hh.adminToken })
    expect([partial.status, partial.json.error.code]).toEqual([409, 'history_incomplete'])
    expect(partial.json.error.details.firstSeq).toBe(4)
    const forced = await hh.call('POST', `${path}?force=true`, { token: hh.adminToken })
    expect(forced.status).toBe(202)
    expect(forced.json).toMatchObject({ state: 'requested', force: true })
    // Every projection's latest job, in one answer (the console's projections tab).
    expect((await hh.call('GET', '/admin/rebuilds', { token: hh.adminToken })).json).toEqual({ jobs: [forced.json] })
    // No worker runs: the job stays requested and blocks a second one.
    const second = await hh.call('POST', `${path}?force=true`, { token: hh.adminToken })
    expect([second.status, second.json.error.code]).toEqual([409, 'rebuild_in_progress'])
    const read = await hh.call('GET', path, { token: hh.adminToken })
    expect(read.json).toMatchObject({ id: forced.json.id, state: 'requested', appliedSeq: 0 })
  })

  test('after NATS lost the event stream, a rebuild is history_incomplete unless forced; a forced one switches in the new stream alone and clears that', async () => {
    const { hh } = await withApplied(10)
    const path = '/admin/projections/leaderboards/rebuild'
    const lostStream = await streamIdentity(hh.jsm, hh.env.config.FANFARE_STREAM)
    await hh.jsm.streams.delete(hh.env.config.FANFARE_STREAM)
    await ensureStreams(hh.nc, hh.env.config)
    // The new stream starts at 1, so retention did not remove anything from it; but the model
    // holds the lost stream's scores, which a rebuild would drop.
    const fresh = await sendBatch(hh, 10)
    await caughtUp(hh)
    // Every runner has moved to the new stream (a partition without new events too).
    const current = await streamIdentity(hh.jsm, hh.env.config.FANFARE_STREAM)
    await until('every checkpoint on the new stream', async () => {
      const rows = await hh.database.db.select().from(projectionCheckpoints)
      // And the catch of unclaimed messages' (partition 0).
      return rows.length === projectionNames.length * 2 + 1 && rows.every((r) => r.stream === current)
    })
    const refused = await hh.call('POST', path, { token: hh.adminToken })
    expect([refused.status, refused.json.error.code, refused.json.error.details]).toEqual([409, 'history_incomplete', { lostStream }])
    // The chat model lost events too (sendBatch makes every fifth event a chat post).
    const chat = await hh.call('POST', '/admin/projections/chat/rebuild', { token: hh.adminToken })
    expect([chat.status, chat.json.error.code]).toEqual([409, 'history_incomplete'])

    const forced = await hh.call('POST', `${path}?force=true`, { token: hh.adminToken })
    expect(forced.status).toBe(202)
    await waitRebuild(hh, 'leaderboards', 'done')
    // What is left is the new stream's events: the model is theirs alone now.
    const expected = oracle(fresh, {})
    expect((await readModels(hh)).entries).toEqual(expected.entries)
    const again = await hh.call('POST', path, { token: hh.adminToken })
    expect(again.status).toBe(202)
    await waitRebuild(hh, 'leaderboards', 'done')
  }, 40_000)

  test("a job whose worker died is taken over and restarted; a finished job can be requested again", async () => {
    h = await createHarness({ FANFARE_PARTITIONS: '2', FANFARE_LEASE_TTL_MS: '1500' })
    const hh = h
    const sent = await sendBatch(hh, 200)
    // A job some worker claimed and then stopped heartbeating (it died mid-rebuild).
    const kv = await new Kvm(hh.nc).create(topology(hh.env.config).jobBucket, { history: 1 })
    const orphan: RebuildJob = {
      id: 'deadbeef0001',
      projection: 'leaderboards',
      state: 'running',
      requestedAt: new Date(Date.now() - 60_000).toISOString(),
      force: false,
      owner: 'gone-worker',
      heartbeatAt: new Date(Date.now() - 30_000).toISOString(),
      attempts: 1,
      appliedSeq: 10,
      pending: 100,
    }
    await kv.put(rebuildKey('leaderboards'), JSON.stringify(orphan))
    // ...and left its shadow schema behind.
    await hh.database.db.execute(sql.raw('CREATE SCHEMA rebuild_deadbeef0001_1'))
    await startWorker(hh)
    const done = await waitRebuild(hh, 'leaderboards', 'done')
    expect(done).toMatchObject({ id: orphan.id, attempts: 2 })
    expect(done.owner).not.toBe('gone-worker')
    await caughtUp(hh)
    expect((await readModels(hh)).entries).toEqual(oracle(sent, {}).entries)
    const left = await hh.database.db.execute(sql`select nspname from pg_namespace where nspname like 'rebuild\\_%'`)
    expect([...(left as unknown as unknown[])]).toEqual([])

    const again = await hh.call('POST', '/admin/projections/leaderboards/rebuild', { token: hh.adminToken })
    expect(again.status).toBe(202)
    expect(again.json.id).not.toBe(orphan.id)
    await waitRebuild(hh, 'leaderboards', 'done')
    expect((await readModels(hh)).entries).toEqual(oracle(sent, {}).entries)
  }, 40_000)

  test('an event stream recreated during a rebuild (NATS lost its data) stops it before the switch; the live model keeps every event', async () => {
    const { hh, sent } = await withApplied(20)
    const config = hh.env.config
    let recreated = false
    const rebuilding = runRebuild(
      await rebuildDeps(hh, {
        // After the shadow's catch-up: NATS loses its data, new events arrive and the live
        // runners apply them from the new stream's start.
        progress: async () => {
          if (recreated) return
          recreated = true
          await hh.jsm.streams.delete(config.FANFARE_STREAM)
          await ensureStreams(hh.nc, config)
          sent.push(...(await sendBatch(hh, 5)))
          await caughtUp(hh)
        },
      }),
      { id: 'recreated', attempt: 1 },
    )
    await expect(rebuilding).rejects.toThrow(/event stream was recreated during the rebuild/)
    expect(recreated).toBe(true)
    // Nothing switched, no checkpoint moved: the live model holds every event, old stream and new,
    // and later events still apply. (Both streams number from 1: the oracle goes by sending order,
    // and the comparison leaves out stream sequences.)
    sent.push(...(await sendBatch(hh, 10)))
    await caughtUp(hh)
    const expected = oracle(sent.map((e, i) => ({ ...e, seq: i + 1 })), {})
    const after = await readModels(hh)
    expectModels(after, expected, { ignoreSeq: true })
  })

  // A cancel (statement_timeout) or a lost connection in the switch's transaction failed the job:
  // nothing switched, and the admin had to request it again.
  test('a switch that meets statement_timeout and a lost connection is rolled back and tried again: it switches once, each channel told to re-sync once', async () => {
    const { hh, sent } = await withApplied(30)
    // The rebuild's own sessions are canceled after 1 s (the others opened before this).
    await setDatabaseDefault(hh.env.vars.DATABASE_URL, 'statement_timeout', '1000', { endSessions: false })
    const pg = postgres(hh.env.vars.DATABASE_URL, { max: 2, onnotice: () => {} })
    closers.push(() => pg.end({ timeout: 5 }))
    // The switch's first statement on the live model waits behind a reader's lock, which is held
    // until the switch was cut once (pg_terminate_backend) and canceled once (statement_timeout).
    const waiting = async () =>
      (await pg<{ pid: number }[]>`select l.pid from pg_locks l join pg_class c on c.oid = l.relation
                                   where c.relname = 'leaderboard_entries' and l.mode = 'AccessExclusiveLock' and not l.granted`)[0]?.pid
    let reader: Promise<unknown> | undefined
    const { lines, logger } = keptLog()
    const { switchedAtSeq } = await runRebuild(
      await rebuildDeps(hh, {
        logger,
        progress: async (p) => {
          if (p.state !== 'switching' || reader) return
          let locked!: () => void
          const held = new Promise<void>((resolve) => (locked = resolve))
          reader = pg.begin(async (tx) => {
            await tx`lock table leaderboard_entries in access share mode`
            locked()
            const first = await until('the switch waiting for the live table', waiting, 20_000, 20)
            await tx`select pg_terminate_backend(${first})`
            await until('the switch waiting again', async () => {
              const pid = await waiting()
              return pid !== undefined && pid !== first ? pid : undefined
            }, 20_000, 20)
            await Bun.sleep(1500)
          })
          await held
        },
      }),
      { id: 'switchretry', attempt: 1 },
    )
    await reader
    const logged = lines.map((l) => JSON.parse(l) as { msg: string; err?: { code?: string; message?: string } })
    const retried = logged.filter((l) => l.msg.startsWith('the switch failed and was rolled back'))
    expect(retried.some((l) => l.err?.code === '57014')).toBe(true)
    expect(retried.length).toBeGreaterThanOrEqual(2)
    expect(switchedAtSeq).toBeGreaterThanOrEqual(Math.max(...sent.filter((e) => e.type === 'score.submitted').map((e) => e.seq)))
    await expectOneSwitch(hh, sent)
  }, 60_000)

  // Retried blindly, a switch that did commit would catch up again into what are now the live
  // tables (every event applied twice) or fail; it must be found and never done twice.
  test('a switch whose COMMIT answer is lost is found committed: done once, not again, each channel told to re-sync once', async () => {
    const { hh, sent } = await withApplied(30)
    // The rebuild reaches Postgres through a proxy that keeps back the answer to its COMMIT, then
    // cuts the connection.
    const { proxy, url } = proxyDatabase(hh.env.vars.DATABASE_URL)
    closers.push(async () => proxy.close())
    const lines: string[] = []
    const output = {
      write: (l: string) => {
        lines.push(l)
        // Logged in the switch's transaction, just before it commits.
        if (!l.includes('rebuilt model switched in')) return
        proxy.hold()
        setTimeout(() => {
          proxy.cut()
          proxy.restore()
        }, 500)
      },
    }
    const { switchedAtSeq } = await runRebuild(await rebuildDeps(hh, { databaseUrl: url, logger: createLogger('info', {}, { output, format: 'json' }) }), { id: 'lostcommit', attempt: 1 })
    const logged = lines.map((l) => JSON.parse(l) as { msg: string; switchedAt?: number })
    expect(logged.filter((l) => l.msg === 'rebuilt model switched in').length).toBe(1)
    expect(logged.find((l) => l.msg === 'the switch committed though its answer was lost')?.switchedAt).toBe(switchedAtSeq)
    await expectOneSwitch(hh, sent)
  }, 60_000)

  test('an event Postgres refuses for its data is a dead letter of the rebuild, as live; the others apply and the rebuild switches in', async () => {
    h = await createHarness({ FANFARE_PARTITIONS: '2', FANFARE_LEASE_TTL_MS: '1500' })
    const hh = h
    await startWorker(hh)
    const sent = await sendBatch(hh, 30)
    const bomb = await sendBomb(hh)
    sent.push(...(await sendBatch(hh, 10)))
    await caughtUp(hh)
    // The live runners applied the bomb (today's code takes it); the rebuild runs `refusing`.
    const { switchedAtSeq } = await runRebuild(await rebuildDeps(hh, { projection: refusing }), { id: 'refused', attempt: 1 })
    expect(switchedAtSeq).toBeGreaterThanOrEqual(bomb.seq)
    // Every other event is in the switched-in model; the bomb is not, and is a dead letter with
    // Postgres' reason, like one the live path refuses.
    expect((await readModels(hh)).entries).toEqual(oracle(sent, {}).entries)
    const dead = await hh.database.db.select().from(deadLetters)
    expect(dead.map((d) => [d.projection, d.eventId, Number(d.streamSeq)])).toEqual([['leaderboards', bomb.id, bomb.seq]])
    expect(dead[0].reason).toContain('22P02')
    // The live runners go on from the switched checkpoints.
    sent.push(...(await sendBatch(hh, 10)))
    await caughtUp(hh)
    expect((await readModels(hh)).entries).toEqual(oracle(sent, {}).entries)
  }, 40_000)

  test('a rebuild applies what the live runners consume and nothing else: a stray on a partition written `01` stays a dead letter of the unclaimed catch', async () => {
    h = await createHarness({ FANFARE_PARTITIONS: '2', FANFARE_LEASE_TTL_MS: '1500' })
    const hh = h
    await startWorker(hh)
    const sent = await sendBatch(hh, 20)
    // A valid event published past the API on its partition written with a leading zero, and on a
    // partition this deployment does not have: no live runner's filter takes either.
    const prefix = hh.env.config.FANFARE_SUBJECT_PREFIX
    const data = { board: 'strays', player: 'stray', score: 99 }
    const p = partitionOf(keyOf({ type: 'score.submitted', data }), 2)
    const body = (id: string) => JSON.stringify({ id, by: 'ingest', type: 'score.submitted', v: 1, data, at: new Date().toISOString() })
    const js = jetstream(hh.nc)
    await js.publish(`${prefix}.ev.0${p}.score.submitted`, body('stray-padded'))
    await js.publish(`${prefix}.ev.${p + 2}.score.submitted`, body('stray-out-of-range'))
    sent.push(...(await sendBatch(hh, 10)))
    await caughtUp(hh)
    const strays = () => hh.database.db.select().from(deadLetters).orderBy(asc(deadLetters.streamSeq))
    await until('the strays to be dead letters', async () => (await strays()).length === 2)
    expect((await readModels(hh)).entries).toEqual(oracle(sent, {}).entries)
    await runRebuild(await rebuildDeps(hh), { id: 'strays', attempt: 1 })
    // The rebuilt model is the live one (it took `01` for partition 1 before), and the switch,
    // which replaces the leaderboards' dead letters, leaves the catch's.
    expect((await readModels(hh)).entries).toEqual(oracle(sent, {}).entries)
    expect((await strays()).map((d) => [d.projection, d.eventId])).toEqual([
      ['unclaimed', 'stray-padded'],
      ['unclaimed', 'stray-out-of-range'],
    ])
  }, 40_000)

  test('the same when the refused event comes in the switch, applied in its transaction: the rebuild switches in, the event a dead letter', async () => {
    const { hh, sent } = await withApplied(20)
    let bomb: { id: string; seq: number } | undefined
    const { switchedAtSeq } = await runRebuild(
      await rebuildDeps(hh, {
        projection: refusing,
        // Just before the switch: the live runners apply the bomb and more, so the switch's
        // transaction must apply them to the shadow to reach the live checkpoints.
        progress: async (p) => {
          if (p.state !== 'switching') return
          bomb = await sendBomb(hh)
          sent.push(...(await sendBatch(hh, 5)))
          await caughtUp(hh)
        },
      }),
      { id: 'refusedtail', attempt: 1 },
    )
    expect(bomb).toBeDefined()
    expect(switchedAtSeq).toBeGreaterThan(bomb!.seq)
    expect((await readModels(hh)).entries).toEqual(oracle(sent, {}).entries)
    const dead = await hh.database.db.select().from(deadLetters)
    expect(dead.map((d) => [d.projection, d.eventId, Number(d.streamSeq)])).toEqual([['leaderboards', bomb!.id, bomb!.seq]])
    expect(dead[0].reason).toContain('22P02')
  }, 40_000)
})

describe('a dead-letter replay during a rebuild', () => {
  test("is 409 rebuild_in_progress while the shadow is being built (the switch would undo its 200); after the switch the same dead letter replays once", async () => {
    h = await createHarness({ FANFARE_PARTITIONS: '2', FANFARE_LEASE_TTL_MS: '1500' })
    const hh = h
    const admin = { token: hh.adminToken }
    // Sum: an event applied twice, or lost, shows in the total.
    expect((await hh.call('PUT', '/admin/leaderboards/tot', { ...admin, body: { operator: 'sum' } })).status).toBe(200)
    // The "bug": player `bug`'s scores are refused while `broken` is set, by live runners and shadow alike.
    let broken = true
    const buggy: Projection = {
      ...leaderboardsProjection,
      apply: async (db, events) => {
        const bad = broken ? events.filter((e) => (e.event.data as { player?: string }).player === 'bug') : []
        const applied = await leaderboardsProjection.apply(db, events.filter((e) => !bad.includes(e)))
        return { ...applied, refused: [...(applied.refused ?? []), ...bad.map((e) => ({ seq: e.seq, reason: 'bug 7' }))] }
      },
    }
    const worker = await startTestWorker(hh.env, { projections: projections.map((p) => (p.name === buggy.name ? buggy : p)) })
    closers.push(() => worker.stop())
    const sent = await sendBatch(hh, 20)
    const r = await hh.call('POST', '/v1/events', { token: hh.ingestToken, body: { type: 'score.submitted', data: { board: 'tot', player: 'bug', score: 5 } } })
    expect(r.status).toBe(202)
    const bug: Sent = { id: r.json.results[0].id, type: 'score.submitted', data: { board: 'tot', player: 'bug', score: 5 }, seq: r.json.results[0].seq }
    sent.push(...(await sendBatch(hh, 10)))
    await caughtUp(hh)
    const [live] = await hh.database.db.select().from(deadLetters)
    expect(live).toMatchObject({ eventId: bug.id, reason: 'bug 7' })
    // The last event in the other partition: the switch then moves the bug's partition's checkpoint
    // past what its idle runner last saw, and the replay after the switch must still apply.
    const other = Array.from({ length: 20 }, (_, i) => ({ board: 'tot', player: `o${i}`, score: 1 })).find(
      (data) => partitionOf(keyOf({ type: 'score.submitted', data }), 2) !== live.partition,
    )!
    const o = await hh.call('POST', '/v1/events', { token: hh.ingestToken, body: { type: 'score.submitted', data: other } })
    expect(o.status).toBe(202)
    sent.push({ id: o.json.results[0].id, type: 'score.submitted', data: other, seq: o.json.results[0].seq })
    await caughtUp(hh)

    // The shadow reads the bug's event while it is still broken (a dead letter of the shadow);
    // then the bug is fixed and an admin replays the live dead letter, before the switch.
    let during: { status: number; code?: string } | undefined
    await runRebuild(
      await rebuildDeps(hh, {
        projection: buggy,
        progress: async (p) => {
          if (during || p.appliedSeq < bug.seq) return
          broken = false
          const replay = await hh.call('POST', `/admin/dead-letters/${live.id}/replay`, admin)
          during = { status: replay.status, code: replay.json.error?.code }
        },
      }),
      { id: 'replayduring', attempt: 1 },
    )
    const entryOfBug = async () => (await hh.database.db.select().from(leaderboardEntries)).find((e) => e.player === 'bug')?.score
    const letters = await hh.database.db.select().from(deadLetters)
    // Refused, so nothing an admin was told had applied is undone by the switch: the event is
    // still a dead letter (the rebuild's) and not in the model.
    expect({ during, applied: await entryOfBug(), deadLetters: letters.map((d) => d.eventId) }).toEqual({
      during: { status: 409, code: 'rebuild_in_progress' },
      applied: undefined,
      deadLetters: [bug.id],
    })
    // After the switch, the same dead letter (it kept its id) replays and applies once.
    expect(letters[0].id).toBe(live.id)
    const after = await hh.call('POST', `/admin/dead-letters/${live.id}/replay`, admin)
    expect([after.status, after.json.outcome]).toEqual([200, 'replayed'])
    expect(await entryOfBug()).toBe(5)
    expect(await hh.database.db.select().from(deadLetters)).toEqual([])
    sent.push(bug, ...(await sendBatch(hh, 10)))
    await caughtUp(hh)
    expect((await readModels(hh)).entries).toEqual(oracle(sent, { tot: 'sum' }).entries)
  }, 40_000)

  test("schemas left by failed rebuilds are dropped when a worker's rebuild runner starts and before the next rebuild, so replays are no longer refused as rebuild_in_progress; a running rebuild's shadow is kept", async () => {
    h = await createHarness({ FANFARE_PARTITIONS: '2', FANFARE_LEASE_TTL_MS: '1500' })
    const hh = h
    const db = hh.database.db
    const kv = await new Kvm(hh.nc).create(topology(hh.env.config).jobBucket, { history: 1 })
    const job = (j: Partial<RebuildJob> & Pick<RebuildJob, 'id' | 'projection' | 'state'>): RebuildJob => ({ requestedAt: new Date().toISOString(), force: false, attempts: 1, appliedSeq: 0, pending: 0, ...j })
    // A failed rebuild of matches whose clean-up failed too: its shadow is still there.
    await kv.put(rebuildKey('matches'), JSON.stringify(job({ id: 'aaaa00000001', projection: 'matches', state: 'failed', finishedAt: new Date().toISOString() })))
    await createShadow(db, 'rebuild_aaaa00000001_1', 'matches')
    // A rebuild of chat genuinely running on another worker (its heartbeat stays fresh for the test).
    await kv.put(rebuildKey('chat'), JSON.stringify(job({ id: 'bbbb00000002', projection: 'chat', state: 'running', owner: 'other-worker', heartbeatAt: new Date(Date.now() + 3_600_000).toISOString() })))
    await createShadow(db, 'rebuild_bbbb00000002_1', 'chat')
    // A switched rebuild whose retired tables were never dropped, and an earlier attempt of the running one.
    await db.execute(sql.raw('CREATE SCHEMA retired_cccc00000003_1'))
    await db.execute(sql.raw('CREATE SCHEMA rebuild_bbbb00000002_0'))

    await startWorker(hh)
    await until('the leftovers to be dropped', async () => (await schemas(hh)).length === 1, 10_000)
    expect(await schemas(hh)).toEqual(['rebuild_bbbb00000002_1'])
    // A dead letter of matches (a start of no match) is replayed: it still fails, but is no longer refused for a rebuild.
    expect((await hh.call('POST', '/v1/events', { token: hh.ingestToken, body: { type: 'match.start', data: { match: 'nope' } } })).status).toBe(202)
    await caughtUp(hh)
    const [letter] = await db.select().from(deadLetters)
    // Still refused (409 still_failing), or refused unseen (409 rebuild_in_progress).
    const replay = async () => (await hh.call('POST', `/admin/dead-letters/${letter.id}/replay`, { token: hh.adminToken })).json.error?.code
    expect(await replay()).toBe('still_failing')

    // Another failure leaves a shadow while this worker runs: replays are 409 until the next rebuild (of any projection) starts.
    await createShadow(db, 'rebuild_aaaa00000001_2', 'matches')
    expect(await replay()).toBe('rebuild_in_progress')
    expect((await hh.call('POST', '/admin/projections/leaderboards/rebuild', { token: hh.adminToken })).status).toBe(202)
    await waitRebuild(hh, 'leaderboards', 'done')
    // The worker drops the switch's retired schema only after it saved the job done (a takeover
    // until then needs it, see jobs.ts): `done` can be read before the drop.
    await until('the switch\'s retired schema to be dropped', async () => !(await schemas(hh)).some((s) => s.startsWith('retired_')), 10_000)
    expect(await schemas(hh)).toEqual(['rebuild_bbbb00000002_1'])
    expect(await replay()).toBe('still_failing')
  }, 40_000)
})

/**
 * A builder that is only slow (a stalled process, a long pause) when its job is taken over: the
 * takeover's attempt runs while the slow one still holds its place, then the slow one goes on. The
 * job must be switched in exactly once (each channel told to re-sync once), and the slow builder
 * must write nothing more once the new owner started.
 */
describe('a slow rebuild builder whose job is taken over', () => {
  /** A point where a builder waits: `reached` once it is there, `release()` lets it go on. */
  const pausePoint = () => {
    let reachedNow!: () => void
    let release!: () => void
    const reached = new Promise<void>((r) => (reachedNow = r))
    const released = new Promise<void>((r) => (release = r))
    let held = false
    // Only the first time the builder gets there.
    const hold = async () => {
      if (held) return
      held = true
      reachedNow()
      await released
    }
    return { reached, release, hold }
  }

  /**
   * Attempt `attempt` of rebuild `id` of the leaderboards, with its own connections like a worker
   * of its own. Its outcome is kept (never an unhandled rejection), and how many switches it logged.
   */
  async function builder(hh: ApiHarness, id: string, attempt: number, deps: Pick<Partial<RebuildDeps>, 'hooks' | 'progress'> = {}) {
    const { logger, logged } = keptLog()
    const run = runRebuild(await rebuildDeps(hh, { logger, ...deps }), { id, attempt })
    const outcome = run.then(
      (r) => ({ switchedAtSeq: r.switchedAtSeq, err: undefined }),
      (err: unknown) => ({ switchedAtSeq: undefined, err }),
    )
    return { outcome, switches: () => logged('rebuilt model switched in') }
  }

  test('slow inside its switch (locks held): the takeover waits for it, finds its switch committed and does not switch again', async () => {
    const { hh, sent } = await withApplied(30)
    const slow = pausePoint()
    const a = await builder(hh, 'slowcommit', 1, { hooks: { beforeSwitchCommit: slow.hold } })
    await slow.reached
    // The takeover starts while the slow switch holds its locks, and waits for one of them.
    const b = await builder(hh, 'slowcommit', 2)
    await until('the takeover waiting for the slow switch', async () => {
      const [row] = await rowsOf<{ n: number | string }>(hh.database.db, sql`select count(*) as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'`)
      return Number(row.n) > 0
    }, 20_000, 20)
    slow.release()
    const [ra, rb] = await Promise.all([a.outcome, b.outcome])
    expect(ra.err).toBeUndefined()
    // The takeover ends the job at the slow attempt's switch, switching nothing itself.
    expect(rb).toEqual({ switchedAtSeq: ra.switchedAtSeq, err: undefined })
    expect([a.switches(), b.switches()]).toEqual([1, 0])
    expect(await schemas(hh)).toEqual(['retired_slowcommit_1'])
    await expectOneSwitch(hh, sent)
  }, 60_000)

  test('slow before its switch: its switch rolls back (taken over) after the takeover switched in; one switch', async () => {
    const { hh, sent } = await withApplied(30)
    const slow = pausePoint()
    const a = await builder(hh, 'slowswitch', 1, { hooks: { beforeSwitch: slow.hold } })
    await slow.reached
    const b = await builder(hh, 'slowswitch', 2)
    const rb = await b.outcome
    expect(rb.err).toBeUndefined()
    // Live went on after the takeover's switch: the slow switch would have a tail to apply.
    sent.push(...(await sendBatch(hh, 10)))
    await caughtUp(hh)
    slow.release()
    const ra = await a.outcome
    expect(ra.err).toBeInstanceOf(RebuildTakenOver)
    expect([a.switches(), b.switches()]).toEqual([0, 1])
    expect(await schemas(hh)).toEqual(['retired_slowswitch_2'])
    await expectOneSwitch(hh, sent)
  }, 60_000)

  test("slow in its catch-up: its next fetch writes nothing, not in the new owner's shadow nor anywhere else; one switch", async () => {
    // More than one catch-up fetch (1,000 events) of scores, and more than a live batch after it.
    const { hh, sent } = await withApplied(1500, { FANFARE_BATCH_SIZE: '100' })
    const slow = pausePoint()
    // Paused after its first fetch committed to its shadow, with more to read.
    const a = await builder(hh, 'slowcatchup', 1, { progress: slow.hold })
    await slow.reached
    // The slow one goes on while the takeover builds its shadow (after the takeover's first fetch).
    const b = await builder(hh, 'slowcatchup', 2, {
      progress: async () => {
        slow.release()
        await a.outcome
      },
    })
    const [ra, rb] = await Promise.all([a.outcome, b.outcome])
    // Refused at its next fetch's transaction: the job is the takeover's.
    expect(ra.err).toBeInstanceOf(RebuildTakenOver)
    expect(rb.err).toBeUndefined()
    expect([a.switches(), b.switches()]).toEqual([0, 1])
    expect(await schemas(hh)).toEqual(['retired_slowcatchup_2'])
    await expectOneSwitch(hh, sent)
  }, 60_000)

  test('through the job runners: a worker slow before its switch is taken over by compare-and-set, stops quietly when it goes on, and the job is done once, by the new owner', async () => {
    h = await createHarness({ FANFARE_PARTITIONS: '2', FANFARE_LEASE_TTL_MS: '1500' })
    const hh = h
    const slow = pausePoint()
    const { logger, logged } = keptLog()
    const worker = await startTestWorker(hh.env, { logger, rebuildHooks: { beforeSwitch: slow.hold } })
    closers.push(() => worker.stop())
    const sent = await sendBatch(hh, 30)
    await caughtUp(hh)
    expect((await hh.call('POST', '/admin/projections/leaderboards/rebuild', { token: hh.adminToken })).status).toBe(202)
    await slow.reached
    // Another worker's rebuild runner, its clock a minute ahead: the slow worker's heartbeats look
    // dead to it (3 TTLs old), as a stalled worker's would.
    const nc = await connectNats(hh.env.vars.NATS_URL, 'rebuild-taker')
    closers.push(() => nc.close())
    const db = await connectBunSql(hh.env.vars.DATABASE_URL, { max: 2 })
    closers.push(() => db.close())
    const taker = startRebuildJobs({
      config: hh.env.config,
      db: db.db,
      nc,
      js: jetstream(nc),
      logger: createLogger('silent'),
      workerId: 'taker',
      projections: [leaderboardsProjection],
      pollMs: 100,
      now: () => new Date(Date.now() + 60_000),
    })
    closers.unshift(() => taker.stop())
    const done = await waitRebuild(hh, 'leaderboards', 'done')
    expect(done).toMatchObject({ attempts: 2, owner: 'taker' })
    slow.release()
    // Stopping waits for its rebuild to end (and would hand a job it still owned back).
    await worker.stop()
    // Gone quietly: no switch, no failure, nothing left; the job stays the new owner's.
    expect(logged('rebuild job taken over by another worker; stopping')).toBeGreaterThan(0)
    expect([logged('rebuilt model switched in'), logged('rebuild failed')]).toEqual([0, 0])
    expect(await schemas(hh)).toEqual([])
    const job = await hh.call('GET', '/admin/projections/leaderboards/rebuild', { token: hh.adminToken })
    expect(job.json).toMatchObject({ id: done.id, state: 'done', attempts: 2, owner: 'taker', switchedAtSeq: done.switchedAtSeq })
    await startWorker(hh)
    await expectOneSwitch(hh, sent)
  }, 60_000)
})
