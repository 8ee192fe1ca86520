/**
 * Probe (not part of `bench/run.ts`): what Postgres reads while a stream worker projects score
 * events into one leaderboard. A fresh deployment, its statistics reset (pg_stat_reset, this
 * database only), then `--events` scores for `--players` players of one board, stored as a backlog
 * before the worker starts or (`--live`) published at `--rate` per second while it runs. The
 * worker (and the API node) are stopped before the counters are read, so their backends have
 * flushed them. Printed: pg_stat_user_tables / pg_stat_user_indexes for every table touched, per
 * event, and the worker's batches (fanfare_batch_events).
 *
 *   flock /tmp/bench.lock node_modules/.bin/bun bench/pg-reads-probe.ts [--events=20000] [--players=20000]
 *     [--live] [--rate=2000]   published while the worker runs, at this rate (default: a backlog)
 *     [--api=N]                an API node with N WebSocket subscribers to the board's channel
 *     [--explain]              plans of every statement, with actual rows, go to the server log (auto_explain)
 *     [--pages=N]              then, the worker stopped: N requests of GET /v1/leaderboards/big at offset 0,
 *                              N at offset 10,000 and N subscribes to its channel, one after the other
 *                              (a snapshot each), each on an API node of its own, counters reset again
 *     [--dir=PATH]             run PATH's copy of Fanfare (an unpacked main, for A/B)
 */
import { readFileSync } from 'node:fs'
import postgres from 'postgres'
import { freePort } from '../core/process'
import { partitionOf, subjects, dedupIdOf } from '../core/events'
import { deploy, publishAll, batchesApplied } from './lib/fanfare'
import { spawnProc, waitReady } from '../test/e2e/harness'
import { Subscriber } from './lib/subscriber'
import { backlogOf } from './lib/backlog'

const arg = (name: string) => process.argv.find((a) => a.startsWith(`--${name}`))?.split('=').slice(1).join('=')
const EVENTS = Number(arg('events') ?? 20_000)
const PLAYERS = Number(arg('players') ?? 20_000)
const LIVE = process.argv.includes('--live')
const RATE = Number(arg('rate') ?? 2000)
const SUBSCRIBERS = arg('api') === undefined ? undefined : Number(arg('api') || 1)
const EXPLAIN = process.argv.includes('--explain')
const DIR = arg('dir')
const PAGES = Number(arg('pages') ?? 0)
const BOARD = 'big'

const load0 = readFileSync('/proc/loadavg', 'utf8').trim()
const d = await deploy()
const url = d.env.vars.DATABASE_URL
const db = new URL(url).pathname.slice(1)
const sql = postgres(url, { max: 1, onnotice: () => {} })
try {
  const { FANFARE_SUBJECT_PREFIX: prefix, FANFARE_PARTITIONS: partitions } = d.env.config
  // Scores rise with i: on a `best` board each player's later score is a change.
  const messages = Array.from({ length: EVENTS }, (_, i) => {
    const e = { id: `s-${i}`, type: 'score.submitted' as const, by: 'ingest', data: { board: BOARD, player: `p${i % PLAYERS}`, score: i } }
    const subject = subjects.event(prefix, partitionOf(`${BOARD}/${e.data.player}`, partitions), e.type)
    return { subject, id: dedupIdOf(e), body: JSON.stringify({ ...e, v: 1, at: new Date().toISOString() }) }
  })
  if (EXPLAIN) {
    await sql.unsafe(`alter database ${db} set session_preload_libraries = 'auto_explain'`)
    await sql.unsafe(`alter database ${db} set auto_explain.log_min_duration = '0'`)
    await sql.unsafe(`alter database ${db} set auto_explain.log_analyze = 'on'`)
    await sql.unsafe(`alter database ${db} set auto_explain.log_nested_statements = 'on'`)
  }
  const root = DIR ?? process.cwd()
  const procs: ReturnType<typeof spawnProc>[] = []
  let subs: Subscriber[] = []
  if (SUBSCRIBERS !== undefined) {
    const port = freePort()
    const api = spawnProc('api', 'api/src/main.ts', { ...d.env.vars, PORT: String(port), HOST: '127.0.0.1' }, root)
    procs.push(api)
    await waitReady(`http://127.0.0.1:${port}`, [api])
    subs = await Promise.all(Array.from({ length: SUBSCRIBERS }, () => Subscriber.open(`ws://127.0.0.1:${port}/v1/ws`, [`leaderboard:${BOARD}`])))
  }
  await sql`select pg_stat_reset()`
  const seqs: number[] = []
  if (!LIVE) seqs.push(...(await publishAll(d.js, messages)))
  const metricsPort = freePort()
  const worker = spawnProc('worker', 'stream-workers/src/main.ts', { ...d.env.vars, FANFARE_METRICS_PORT: String(metricsPort) }, root)
  procs.push(worker)
  const t0 = performance.now()
  if (LIVE) {
    const per = Math.max(1, Math.round(RATE / 20))
    for (let i = 0; i < messages.length; i += per) {
      const next = t0 + ((i / RATE) * 1000)
      const wait = next - performance.now()
      if (wait > 0) await Bun.sleep(wait)
      seqs.push(...(await publishAll(d.js, messages.slice(i, i + per))))
    }
  }
  // Done when the checkpoints passed every event (read from projection_checkpoints, not the board:
  // polling leaderboard_entries would add to the counters measured).
  const backlog = backlogOf('leaderboards', messages.map((m) => m.subject), seqs)
  const deadline = Date.now() + 300_000
  while ((await backlog.progress(sql)).applied < EVENTS && Date.now() < deadline) await Bun.sleep(20)
  const seconds = (performance.now() - t0) / 1000
  const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text()
  const metric = (name: string) => metrics.split('\n').filter((l) => l.startsWith(name)).reduce((s, l) => s + Number(l.split(' ').pop()), 0)
  const batches = metric('fanfare_batch_events_count{projection="leaderboards"') || metric('fanfare_batch_events_count')
  for (const s of subs) s.close()
  await Promise.all(procs.map((p) => p.stop()))
  await Bun.sleep(700)
  const tables = await sql`select relname, seq_scan, seq_tup_read, idx_scan, idx_tup_fetch, n_tup_ins, n_tup_upd, n_tup_hot_upd from pg_stat_user_tables where coalesce(idx_scan,0) + seq_scan + n_tup_ins + n_tup_upd > 0 order by coalesce(idx_tup_fetch,0) + seq_tup_read desc`
  const indexes = await sql`select relname, indexrelname, idx_scan, idx_tup_read, idx_tup_fetch from pg_stat_user_indexes where idx_scan > 0 order by idx_tup_read desc`
  const io = await sql`select relname, heap_blks_read + heap_blks_hit as heap, coalesce(idx_blks_read,0) + coalesce(idx_blks_hit,0) as idx from pg_statio_user_tables where relname = 'leaderboard_entries'`
  // Counted after the counters are read: this probe's own count is no part of them.
  const [{ n: rows }] = await sql`select count(*)::int as n from leaderboard_entries`
  const per = (n: unknown) => (Number(n) / EVENTS).toFixed(2)
  console.log(JSON.stringify({ events: EVENTS, players: PLAYERS, live: LIVE ? RATE : false, subscribers: SUBSCRIBERS ?? 0, batches, seconds: seconds.toFixed(2), 'events/s': Math.round(EVENTS / seconds), dir: root, load: [load0, readFileSync('/proc/loadavg', 'utf8').trim()] }))
  console.table(tables.map((t) => ({ ...t, 'idx_tup_fetch/event': per(t.idx_tup_fetch), 'seq_tup_read/event': per(t.seq_tup_read) })))
  console.table(indexes.map((i) => ({ ...i, 'idx_tup_read/event': per(i.idx_tup_read), 'scans/batch': (Number(i.idx_scan) / batches).toFixed(1) })))
  console.table(io)
  // Pages at two offsets, then subscribes (a snapshot each: the top 100 and the reserve of 100).
  for (const offset of PAGES > 0 ? [0, 10_000, 'snapshot'] as const : []) {
    const port = freePort()
    const api = spawnProc('api', 'api/src/main.ts', { ...d.env.vars, PORT: String(port), HOST: '127.0.0.1' }, root)
    await waitReady(`http://127.0.0.1:${port}`, [api])
    await sql`select pg_stat_reset()`
    if (offset === 'snapshot') {
      for (let i = 0; i < PAGES; i++) (await Subscriber.open(`ws://127.0.0.1:${port}/v1/ws`, [`leaderboard:${BOARD}`])).close()
    } else {
      for (let i = 0; i < PAGES; i++) await (await fetch(`http://127.0.0.1:${port}/v1/leaderboards/${BOARD}?offset=${offset}`)).arrayBuffer()
    }
    await api.stop()
    await Bun.sleep(700)
    const [t] = await sql`select idx_scan, idx_tup_fetch from pg_stat_user_tables where relname = 'leaderboard_entries'`
    const [i] = await sql`select coalesce(sum(idx_tup_read), 0) as idx_tup_read from pg_stat_user_indexes where indexrelname like 'leaderboard_entries_rank%'`
    console.log(JSON.stringify({ pages: PAGES, offset, idx_scan: Number(t.idx_scan), idx_tup_fetch: Number(t.idx_tup_fetch), 'rank index entries read': Number(i.idx_tup_read), 'tuples per request': Math.round(Number(t.idx_tup_fetch) / PAGES) }))
  }
} finally {
  await sql.end()
  await d.close()
}
