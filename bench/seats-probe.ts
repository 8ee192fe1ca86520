/**
 * `flock /tmp/bench.lock node_modules/.bin/bun bench/seats-probe.ts [--matches=10000] [--started=0]
 *   [--rounds=3] [--compare=/tmp/x-base]`: what the seat watcher's book costs an API node when
 * the matches table holds many live matches (say lobbies a buggy game server left open).
 *
 * Seeds a fresh database with `matches` open lobbies (2 seats each) and `started` started
 * matches (4 seats each), each with its `match:<id>` channel version. Then, in a fresh child
 * process per side and round (alternating this checkout and `--compare`, so memory is the
 * process's own), it does what that checkout's seat book does at a node's start and at every
 * match-feed resync, and prints its time, rows read, and heap and RSS growth:
 * - a checkout with `readLiveSeats`: reads every open/full/started match and loads the book;
 * - one with `readSeats` (lazy): nothing at start; then `--lookups` presence changes on distinct
 *   matches fill the book on first use, read in batches as the watcher does (`--batch` ids).
 * With `--sweep=<s>` each child then runs that checkout's grace sweep over the lobbies (every one
 * with a grace ended, leaves never applied) for that long (`--sweep-ms` between rounds).
 */
import { spawnSync } from 'node:child_process'
import { resolve } from 'node:path'
import { connectPostgres, rowsOf } from '../core/db/client'
import { createTestEnv } from '../core/testing/env'
import { sql } from 'drizzle-orm'

const arg = (name: string, d: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1] ?? d
const num = (name: string, d: number) => Number(arg(name, String(d)))

if (process.argv[2] === 'child') await child()
else await parent()

async function parent() {
  const n = num('matches', 10_000)
  const started = num('started', 0)
  const rounds = num('rounds', 3)
  const compare = arg('compare', '')
  const env = await createTestEnv()
  try {
    const database = await connectPostgres(env.vars.DATABASE_URL, { max: 1 })
    const t0 = performance.now()
    await database.db.execute(sql`
      insert into matches (match, mode, max_players, status, players, player_count, created_at, created_seq, grace_until)
      select 'lobby-' || i, 'duel', 4, 'open',
        jsonb_build_array(
          jsonb_build_object('player', 'p' || i || 'a', 'ready', false, 'connected', false, 'disconnectedAt', null, 'graceUntil', 1700000000000),
          jsonb_build_object('player', 'p' || i || 'b', 'ready', false, 'connected', true, 'disconnectedAt', null, 'graceUntil', null)),
        2, now(), i, to_timestamp(1700000000)
      from generate_series(1, ${n}) i`)
    await database.db.execute(sql`
      insert into matches (match, mode, max_players, status, players, player_count, created_at, created_seq)
      select 'game-' || i, 'duel', 4, 'started',
        (select jsonb_agg(jsonb_build_object('player', 'g' || i || '-' || k, 'ready', true, 'connected', true, 'disconnectedAt', null, 'graceUntil', null)) from generate_series(1, 4) k),
        4, now(), ${n} + i
      from generate_series(1, ${started}) i`)
    await database.db.execute(sql`insert into channel_versions (channel, version, epoch) select 'match:' || match, 3, 'e1' from matches`)
    await database.db.execute(sql`analyze`)
    const [size] = await rowsOf<{ bytes: string }>(database.db, sql`select pg_total_relation_size('matches')::text as bytes`)
    await database.close()
    console.log(`seeded ${n} open + ${started} started matches in ${((performance.now() - t0) / 1000).toFixed(1)} s; matches table ${(Number(size.bytes) / 1e6).toFixed(1)} MB; load ${(await Bun.file('/proc/loadavg').text()).trim()}`)
    const sides = [resolve(import.meta.dir, '..'), ...(compare ? [resolve(compare)] : [])]
    for (let r = 0; r < rounds; r++) {
      for (const dir of r % 2 === 0 ? sides : [...sides].reverse()) {
        const out = spawnSync(process.execPath, [import.meta.path, 'child', `--dir=${dir}`, `--url=${env.vars.DATABASE_URL}`, `--lookups=${num('lookups', 1000)}`, `--batch=${num('batch', 100)}`, `--total=${n + started}`, `--sweep=${num('sweep', 0)}`, `--sweep-ms=${num('sweep-ms', 1000)}`], { encoding: 'utf8' })
        console.log(`round ${r + 1} ${dir === sides[0] ? 'this' : 'compare'}: ${(out.stdout || out.stderr).trim()}`)
      }
    }
    console.log(`load after ${(await Bun.file('/proc/loadavg').text()).trim()}`)
  } finally {
    await env.cleanup()
  }
}

async function child() {
  const dir = arg('dir', '')
  const mod = await import(`${dir}/api/src/modules/matches/service.ts`)
  const { createSeatBook } = await import(`${dir}/api/src/modules/matches/seat-book.ts`)
  const database = await connectPostgres(arg('url', ''), { max: 2 })
  await database.db.execute(sql`select 1`)
  Bun.gc(true)
  const before = process.memoryUsage()
  const book = createSeatBook()
  const t0 = performance.now()
  let line: string
  if (typeof mod.readLiveSeats === 'function') {
    let rows = await mod.readLiveSeats(database.db)
    const count = rows.length
    Bun.gc(true)
    const peak = process.memoryUsage()
    book.load(rows)
    const ms = performance.now() - t0
    rows = []
    Bun.gc(true)
    const after = process.memoryUsage()
    line = `start/resync: readLiveSeats + load ${ms.toFixed(0)} ms, ${count} rows; heap +${((peak.heapUsed - before.heapUsed) / 1e6).toFixed(1)} MB the rows read, +${((after.heapUsed - before.heapUsed) / 1e6).toFixed(1)} MB the book loaded (rows dropped); rss +${((after.rss - before.rss) / 1e6).toFixed(1)} MB`
  } else {
    // Lazy: nothing read at start or resync; presence changes on `lookups` distinct matches read them in batches.
    const total = num('total', 1)
    const lookups = Math.min(num('lookups', 1000), total)
    const batch = num('batch', 100)
    const ids: string[] = []
    for (let i = 0; i < lookups; i++) ids.push(`lobby-${1 + Math.floor((i * total) / lookups)}`)
    let rows = 0
    for (let i = 0; i < ids.length; i += batch) {
      const got = await mod.readSeats(database.db, ids.slice(i, i + batch))
      rows += got.length
      book.load(got)
    }
    const ms = performance.now() - t0
    Bun.gc(true)
    const after = process.memoryUsage()
    line = `start/resync: nothing read; ${lookups} first uses in batches of ${batch}: ${ms.toFixed(0)} ms (${(ms / Math.ceil(lookups / batch)).toFixed(2)} ms a batch), ${rows} rows; heap +${((after.heapUsed - before.heapUsed) / 1e6).toFixed(1)} MB, rss +${((after.rss - before.rss) / 1e6).toFixed(1)} MB`
  }
  console.log(line)
  if (num('sweep', 0) > 0) console.log(`  ${await sweep(mod, dir, database.db)}`)
  await database.close()
}

/**
 * The grace sweep of this checkout against the seeded lobbies (every one with a grace ended), for
 * `--sweep` seconds with `--sweep-ms` between rounds; leaves are collected, never applied (a
 * projection far behind, or the lobbies' partitions without a worker): how many distinct matches
 * it reached, and what a round cost.
 */
async function sweep(_mod: unknown, dir: string, db: import('../core/db/client').Db) {
  const { startSeatWatcher } = await import(`${dir}/api/src/modules/matches/seats.ts`)
  const { createLogger } = await import(`${dir}/core/logger.ts`)
  const reached = new Set<string>()
  let leaves = 0
  let publishes = 0
  const w = startSeatWatcher({
    presence: { node: 'n', peers: () => [], onChange: () => () => {}, totals: () => ({ connections: 0, users: [] }), channels: () => [] },
    notices: () => () => {},
    ingest: {
      publish: async (events: { type: string; data: { match: string } }[]) => {
        publishes++
        for (const e of events) if (e.type === 'match.leave') (leaves++, reached.add(e.data.match))
        return []
      },
    },
    db,
    graceMs: 1000,
    logger: createLogger('silent'),
    sweepMs: num('sweep-ms', 1000),
    warmupMs: 0,
  })
  const seconds = num('sweep', 0)
  const t0 = performance.now()
  await Bun.sleep(seconds * 1000)
  await w.stop()
  const elapsed = (performance.now() - t0) / 1000
  return `sweep ${seconds} s (rounds every ${num('sweep-ms', 1000)} ms): ${reached.size} of ${num('total', 0)} due matches reached, ${leaves} leaves published in ${publishes} publishes (${(reached.size / elapsed).toFixed(0)} matches/s)`
}
