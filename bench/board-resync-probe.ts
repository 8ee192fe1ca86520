/**
 * `bun bench/board-resync-probe.ts [model|live] [--players=1000] [--updates=20000] [--seed=1]`:
 * how often a client following a big busy `leaderboard:` channel asks for a snapshot again
 * (RESYNC), per 1,000 updates.
 *
 * - model: the SDK's leaderboard helper against a model of the server (the workers' nextScore,
 *   the board's ranking), snapshots answered at once. Boards: `latest` with random scores up and
 *   down, and `sum` with decrements only (scores only go down). Each board is played with a
 *   snapshot of the top 100 alone (as before the reserve) and with the reserve of the next 100,
 *   on the same sequence of scores. Deterministic (seeded).
 * - live: real processes (one API node, one worker, their own database and streams): a `latest`
 *   board of `players` players, then `updates` random scores in batches of 50 (10 ms apart), one
 *   SDK client following the channel; counts its snapshots, resyncs, updates applied, snapshot
 *   frame bytes, and checks its top 100 against REST at the end.
 * - read --compare=<checkout> [--rounds=5] [--reads=500]: the server's cost of a snapshot: a board
 *   of `players` entries in a fresh database; this checkout's leaderboardSnapshot and another's
 *   (say the commit before the reserve, `git archive` unpacked, node_modules linked) take turns
 *   reading it `reads` times one after another; prints per side the mean read time and the bytes
 *   of the snapshot frame's data.
 */
import { nextScore, type Standing } from '../stream-workers/src/projections/leaderboards/projection'
import { helpers, RESYNC } from '../client/src/state'
import type { ChannelSnapshots, ChannelUpdates } from '../client/src/protocol'

type Board = ChannelSnapshots['leaderboard']
const arg = (name: string, d: number) => Number(process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1] ?? d)
const mode = process.argv.slice(2).find((a) => !a.startsWith('--')) ?? 'model'
const players = arg('players', 1000)
const updates = arg('updates', 20000)
const seed = arg('seed', 1)
const LIMIT = 100

/** A small seeded generator (mulberry32): the same scores for every side. */
function random(s: number) {
  return () => {
    s = (s + 0x6d2b79f5) | 0
    let t = Math.imul(s ^ (s >>> 15), 1 | s)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

function modelRun(operator: 'latest' | 'sum', reserve: number | undefined) {
  const rnd = random(seed)
  const standings = new Map<string, Standing>()
  let seq = 0
  const ranked = () => [...standings].sort(([pa, a], [pb, b]) => b.score - a.score || a.reachedSeq - b.reachedSeq || (pa < pb ? -1 : 1))
  const snapshot = (): Board => {
    const all = ranked()
    const entries = all.slice(0, LIMIT).map(([player, s], i) => ({ rank: i + 1, player, score: s.score, reachedSeq: s.reachedSeq }))
    const rest = all.slice(LIMIT, LIMIT + (reserve ?? 0)).map(([player, s]) => ({ player, score: s.score, reachedSeq: s.reachedSeq }))
    return {
      board: 'b', order: 'desc', operator, reset: 'none', period: null, entries, limit: LIMIT, more: all.length > LIMIT,
      ...(reserve === undefined ? {} : { reserve: { size: reserve, entries: rest, more: all.length > LIMIT + rest.length } }),
    }
  }
  const submit = (player: string, score: number): ChannelUpdates['leaderboard'] | undefined => {
    const current = standings.get(player)
    const next = nextScore(current, { score, seq: ++seq }, { sortOrder: 'desc', operator })
    if (!next) return undefined
    standings.set(player, next)
    return { player, score: next.score, previous: current?.score ?? null, reachedSeq: next.reachedSeq }
  }
  for (let p = 0; p < players; p++) submit(`p${p}`, operator === 'latest' ? Math.floor(rnd() * 10_000) : 1_000_000 + Math.floor(rnd() * 10_000))
  let state = snapshot()
  let resyncs = 0
  let bytes = JSON.stringify(state).length
  const started = performance.now()
  for (let i = 0; i < updates; i++) {
    const player = `p${Math.floor(rnd() * players)}`
    // latest: any score, up or down; sum: a decrement of 1-100 (scores only go down).
    const u = submit(player, operator === 'latest' ? Math.floor(rnd() * 10_000) : -1 - Math.floor(rnd() * 100))
    if (!u) continue
    const next = helpers.leaderboard.apply(state, u, 0)
    if (next === RESYNC) {
      resyncs++
      state = snapshot()
      bytes += JSON.stringify(state).length
    } else state = next
  }
  const ms = performance.now() - started
  // The shown top must be the server's at the end (the property test checks every step).
  const truth = snapshot()
  if (!Bun.deepEquals(state.entries, truth.entries) || state.more !== truth.more) throw new Error('shown board differs from the server model')
  return { resyncs, per1000: (resyncs / updates) * 1000, snapshotBytes: JSON.stringify(truth).length, bytesPer1000: Math.round((bytes / updates) * 1000), applyUs: (ms * 1000) / updates }
}

async function live() {
  const { startDeployment } = await import('../test/sdk/deployment')
  const { createClient } = await import('../client/src')
  const d = await startDeployment({ apis: 1, workers: 1 })
  try {
    const board = 'busy'
    const admin = await d.call('PUT', `/admin/leaderboards/${board}`, { operator: 'latest' }, { token: d.env.vars.FANFARE_ADMIN_TOKEN })
    if (admin.status !== 200) throw new Error(`configure: ${admin.status} ${JSON.stringify(admin.json)}`)
    const rnd = random(seed)
    const post = async (events: { player: string; score: number }[]) => {
      const res = await d.call('POST', '/v1/events', { events: events.map((e) => ({ type: 'score.submitted', data: { board, ...e } })) })
      if (res.status !== 202) throw new Error(`POST: ${res.status} ${JSON.stringify(res.json)}`)
    }
    for (let p = 0; p < players; p += 250) await post(Array.from({ length: Math.min(250, players - p) }, (_, k) => ({ player: `p${p + k}`, score: Math.floor(rnd() * 10_000) })))
    const readBoard = async () => (await d.call('GET', `/v1/leaderboards/${board}?limit=100`)).json
    // Wait for every player to be on the board before following it.
    for (let t = 0; (await d.call('GET', `/v1/leaderboards/${board}?offset=${players - 1}&limit=1`)).json.entries.length < 1; t++) {
      if (t > 300) throw new Error('board never filled')
      await Bun.sleep(50)
    }
    const client = createClient({ urls: d.urls, token: await d.token('watcher') })
    let resyncs = 0
    let applied = 0
    let snapshotBytes = 0
    const sub = client.subscribe(`leaderboard:${board}`, {
      onUpdate: () => void applied++,
      // Every snapshot after the first replaces the state held: a re-sync.
      onResync: (s) => {
        resyncs++
        snapshotBytes += JSON.stringify(s).length
      },
    })
    while (sub.status !== 'live') await Bun.sleep(20)
    const firstBytes = JSON.stringify(sub.state).length
    const started = performance.now()
    for (let i = 0; i < updates; i += 50) {
      await post(Array.from({ length: Math.min(50, updates - i) }, () => ({ player: `p${Math.floor(rnd() * players)}`, score: Math.floor(rnd() * 10_000) })))
      await Bun.sleep(10)
    }
    const sent = performance.now() - started
    // Converged: the held top equals REST (versions move on, so compare until equal).
    const deadline = Date.now() + 30_000
    for (;;) {
      const rest = await readBoard()
      const held = sub.state?.entries.map(({ reachedSeq: _, ...e }) => e)
      if (Bun.deepEquals(held, rest.entries)) break
      if (Date.now() > deadline) throw new Error('client never converged with REST')
      await Bun.sleep(100)
    }
    client.close()
    return { players, updates, sendSeconds: +(sent / 1000).toFixed(1), firstSnapshotBytes: firstBytes, resyncs, resyncsPer1000: +((resyncs / updates) * 1000).toFixed(2), applied, snapshotBytes }
  } finally {
    await d.stop()
  }
}

async function read() {
  const compare = process.argv.find((a) => a.startsWith('--compare='))?.slice(10)
  if (!compare) throw new Error('read needs --compare=<checkout>')
  const { createTestEnv } = await import('../core/testing/env')
  const { connectPostgres } = await import('../core/db/client')
  const { leaderboardEntries } = await import('../core/db/schema')
  const env = await createTestEnv()
  const database = await connectPostgres(env.vars.DATABASE_URL, { max: 1 })
  try {
    const rnd = random(seed)
    for (let p = 0; p < players; p += 1000) {
      const rows = Array.from({ length: Math.min(1000, players - p) }, (_, k) => ({ board: 'busy', player: `p${p + k}`, score: Math.floor(rnd() * 10_000), reachedSeq: p + k + 1 }))
      await database.db.insert(leaderboardEntries).values(rows)
    }
    await database.db.execute('ANALYZE leaderboard_entries' as never)
    const sides = {
      this: (await import('../api/src/modules/leaderboards/service')).leaderboardSnapshot,
      [compare]: (await import(`${compare}/api/src/modules/leaderboards/service.ts`)).leaderboardSnapshot as typeof import('../api/src/modules/leaderboards/service').leaderboardSnapshot,
    }
    const reads = arg('reads', 500)
    for (let r = 0; r < arg('rounds', 5); r++) {
      for (const [name, snap] of Object.entries(sides)) {
        for (let i = 0; i < 20; i++) await snap(database.db, 'busy')
        const started = performance.now()
        for (let i = 0; i < reads; i++) await snap(database.db, 'busy')
        const us = ((performance.now() - started) * 1000) / reads
        const bytes = JSON.stringify((await snap(database.db, 'busy')).data).length
        console.log(JSON.stringify({ mode, round: r + 1, side: name, players, readUs: Math.round(us), dataBytes: bytes, load: (await Bun.file('/proc/loadavg').text()).split(' ').slice(0, 3).join(' ') }))
      }
    }
  } finally {
    await database.close()
    await env.cleanup()
  }
}

if (mode === 'read') {
  await read()
} else if (mode === 'live') {
  console.log(JSON.stringify({ mode, load: (await Bun.file('/proc/loadavg').text()).trim(), ...(await live()) }))
} else {
  for (const operator of ['latest', 'sum'] as const) {
    for (const reserve of [undefined, LIMIT]) {
      const r = modelRun(operator, reserve)
      console.log(JSON.stringify({ mode, operator, players, updates, reserve: reserve ?? 'none', ...r, per1000: +r.per1000.toFixed(2), applyUs: +r.applyUs.toFixed(1) }))
    }
  }
}
