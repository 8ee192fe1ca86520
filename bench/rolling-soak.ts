/**
 * `bun bench/rolling-soak.ts [--phases=api,workers,scale,migrate,config] [--keep]`: routine
 * operations under steady load, checked from outside. Fanfare runs as an operator runs it (this
 * checkout: `migrate`, two API nodes on fixed ports, workers as separate processes) on a private
 * nats-server and a database of its own. Load: score batches (a `latest` board, each player's
 * scores rising), chat posts, reactions (all over REST with the ingest token, resent with the same
 * ids to the other node when refused or cut, as a client behind a load balancer would) and poll
 * votes (one per user, a user token each). Raw WebSocket subscribers on both nodes follow the four
 * channels, move to the other node when their socket closes and resume with since + epoch; two
 * SDK clients (users, both nodes in their URL lists) follow the board and the room and post chat
 * over their WebSocket. A request cut by a stopping node is resent: if JetStream had stored it,
 * the node dropped an answer it owed (counted as broken).
 *
 * Phases, in order, while the load runs: `api` SIGTERM each API node in turn and start it again;
 * `workers` the same for each worker; `scale` workers 2 -> 1 -> 3 -> 1; `migrate` `npm run migrate`
 * again; `config` an API node restarted with other limits (`--config`); `migrate-scale` (not by
 * default) workers 1 -> 3 while `npm run migrate` runs, then 1. Then the load stops, the read models
 * drain, and the run compares acknowledged events with the read models, the REST reads and each
 * subscriber. Exits non-zero when a promise is broken. Not part of `npm test` (it runs minutes).
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import postgres from 'postgres'
import { mintUserToken } from '../api/src/auth/mint'
import { createClient, type Client, type Subscription } from '../client/src'
import { TEST_PG_URL } from '../core/testing/env'
import { spawnProc, until, waitReady, type Proc } from '../test/e2e/harness'
import { privateNats } from '../test/cluster/private-nats'
import { apiAt, configureBoard } from '../test/cluster/support'

const arg = (name: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3)
const PHASES = (arg('phases') ?? 'api,workers,scale,migrate,config').split(',')
const BASE_PORT = Number(arg('port') ?? 46000)
const KEEP = process.argv.includes('--keep')
/** What the `config` phase restarts an API node with (`--config='{"FANFARE_...":"..."}'` for others). */
const CHANGED_CONFIG: Record<string, string> = JSON.parse(
  arg('config') ?? '{"FANFARE_WS_SUBSCRIBES_PER_SECOND":"5","FANFARE_INGEST_MAX_IN_FLIGHT":"5000","FANFARE_MAX_BODY_BYTES":"262144","FANFARE_REACTION_WINDOW_MS":"500","FANFARE_HISTORY_SIZE":"500"}',
)

const BOARD = 'rb'
const ROOM = 'rr'
const STREAM = 'rs'
const POLL = 'rp'
const CHANNELS = [`leaderboard:${BOARD}`, `chat:${ROOM}`, `reactions:${STREAM}`, `poll:${POLL}`]
const EMOJIS = ['👏', '🔥', '❤️', '😂']
const PLAYERS = 40

const id = `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`
const dbName = `fanfare_rolling_${id}`
const dbUrl = (() => {
  const u = new URL(TEST_PG_URL)
  u.pathname = `/${dbName}`
  return u.toString()
})()
const storeDir = mkdtempSync(join(tmpdir(), 'fanfare-rolling-'))
const nats = privateNats({ port: BASE_PORT + 100, storeDir })
const apiPorts = [BASE_PORT + 1, BASE_PORT + 2]
const urls = apiPorts.map((p) => `http://127.0.0.1:${p}`)
const vars: Record<string, string> = {
  DATABASE_URL: dbUrl,
  NATS_URL: nats.url,
  HOST: '127.0.0.1',
  FANFARE_INGEST_TOKEN: `rolling-ingest-${id}`,
  FANFARE_ADMIN_TOKEN: `rolling-admin-${id}`,
  FANFARE_JWT_SECRET: `rolling-secret-${id}-0123456789abcdef0123`,
  FANFARE_PARTITIONS: '4',
  LOG_LEVEL: process.env.LOG_LEVEL ?? 'warn',
}

const t0 = Date.now()
const log = (msg: string) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1).padStart(6)} s] ${msg}`)

// ---------------------------------------------------------------------------------------------
// Processes

const procs: Proc[] = []
const apis: Proc[] = []
const workers: Proc[] = []
let counter = 0

function startApi(i: number, extra: Record<string, string> = {}) {
  const p = spawnProc(`api${i}#${++counter}`, 'api/src/main.ts', { ...vars, PORT: String(apiPorts[i]), ...extra })
  procs.push(p)
  apis[i] = p
  return p
}
function startWorker() {
  const p = spawnProc(`worker#${++counter}`, 'stream-workers/src/main.ts', vars)
  procs.push(p)
  workers.push(p)
  return p
}
async function stopGracefully(p: Proc) {
  const at = Date.now()
  const code = await p.stop('SIGTERM')
  const took = Date.now() - at
  log(`${p.name} SIGTERM: exit ${code} after ${took} ms`)
  if (code !== 0) problems.push(`${p.name} exited ${code} on SIGTERM: ${p.output().slice(-1500)}`)
  const errors = p.output().split('\n').filter((l) => /"level":(50|60)/.test(l))
  if (errors.length) notes.push(`${p.name} logged ${errors.length} errors, e.g. ${errors.slice(0, 3).join(' | ').slice(0, 1500)}`)
}
async function runMigrate() {
  const at = Date.now()
  const m = spawnProc(`migrate#${++counter}`, 'core/db/migrate-cli.ts', vars)
  const code = await m.proc.exited
  log(`migrate: exit ${code} after ${Date.now() - at} ms`)
  if (code !== 0) throw new Error(`migrate exited ${code}: ${m.output()}`)
}

const problems: string[] = []
const notes: string[] = []

// ---------------------------------------------------------------------------------------------
// Publishers

type Answer = string
const answers: Record<string, number> = {}
const count = (what: string) => (answers[what] = (answers[what] ?? 0) + 1)

/** Posts `events` with `token` until 202, to node `node` first, then alternating on a refusal or a cut. */
async function sendUntilAcked(kind: string, events: unknown[], token: string, node: number): Promise<{ results: { duplicate: boolean }[]; attempts: number }> {
  let cut = false
  for (let attempt = 1; ; attempt++) {
    const target = (node + attempt - 1) % 2
    let label: Answer
    let res: Response | undefined
    let body: any
    try {
      res = await fetch(`${urls[target]}/v1/events`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
        body: JSON.stringify({ events }),
        signal: AbortSignal.timeout(15_000),
      })
      body = await res.json().catch(() => null)
      label = `${res.status}${body?.error?.code ? ` ${body.error.code}` : ''}`
    } catch (err) {
      label = `0 ${(err as Error).name === 'TimeoutError' ? 'timeout' : 'connection'}: ${String((err as Error).message).slice(0, 60)}`
    }
    count(`${kind} ${label}`)
    if (label.includes('ECONNRESET')) cut = true
    if (res?.status === 202) {
      // A request cut mid-way: were its events stored (the node took it and dropped the answer) or not?
      if (cut && kind !== 'reactions') count(`${kind} cut, then ${body.results.some((r: { duplicate: boolean }) => r.duplicate) ? 'found stored (an answer lost)' : 'not stored'}`)
      return { results: body.results, attempts: attempt }
    }
    if (res && res.status >= 400 && res.status < 500 && res.status !== 429) throw new Error(`${kind}: ${label} ${JSON.stringify(body)}`)
    await Bun.sleep(res?.status === 429 ? Number(body?.error?.details?.retryAfterMs ?? 100) : 100)
  }
}

const acked = { scores: 0, chat: 0, reactions: 0, votes: 0 }
const sent = { scores: 0, chat: 0, reactions: 0, votes: 0 }
const latest = new Map<string, number>()
const reactionOracle: Record<string, number> = {}
const voteOracle = [0, 0, 0]
let freshDuplicates = 0
let running = true

async function scoreLane(lane: number) {
  for (let b = 0; running; b++) {
    const events = Array.from({ length: 20 }, (_, k) => {
      const i = b * 20 + k
      return { id: `s-${lane}-${i}`, type: 'score.submitted', data: { board: BOARD, player: `p${lane}-${i % (PLAYERS / 2)}`, score: i + 1 } }
    })
    sent.scores += events.length
    const a = await sendUntilAcked('scores', events, vars.FANFARE_INGEST_TOKEN, lane % 2)
    if (a.attempts === 1 && a.results.some((r) => r.duplicate)) freshDuplicates++
    acked.scores += events.length
    for (const e of events) latest.set(e.data.player, e.data.score)
    await Bun.sleep(100)
  }
}

async function chatLane() {
  for (let i = 0; running; i++) {
    const events = Array.from({ length: 5 }, (_, k) => ({ id: `c-${i}-${k}`, type: 'chat.message.posted', data: { room: ROOM, user: `u${k}`, text: `m ${i}.${k}` } }))
    sent.chat += events.length
    await sendUntilAcked('chat', events, vars.FANFARE_INGEST_TOKEN, i % 2)
    acked.chat += events.length
    await Bun.sleep(80)
  }
}

async function reactionLane() {
  for (let i = 0; running; i++) {
    const events = Array.from({ length: 10 }, (_, k) => ({ id: `r-${i}-${k}`, type: 'reaction.sent', data: { stream: STREAM, emoji: EMOJIS[(i + k) % EMOJIS.length] } }))
    sent.reactions += events.length
    await sendUntilAcked('reactions', events, vars.FANFARE_INGEST_TOKEN, (i + 1) % 2)
    acked.reactions += events.length
    for (const e of events) reactionOracle[e.data.emoji] = (reactionOracle[e.data.emoji] ?? 0) + 1
    await Bun.sleep(80)
  }
}

async function voteLane(lane: number) {
  for (let i = 0; running; i++) {
    const user = `v${lane}-${i}`
    const option = (lane + i) % 3
    const token = await mintUserToken(vars.FANFARE_JWT_SECRET, { sub: user, ttlSeconds: 3600 })
    sent.votes++
    await sendUntilAcked('votes', [{ id: `vote-${user}`, type: 'poll.voted', data: { poll: POLL, option } }], token, (lane + i) % 2)
    acked.votes++
    voteOracle[option]++
    await Bun.sleep(40)
  }
}

/**
 * An SDK client (a user, both nodes in its URL list) that follows the board and the room and
 * posts chat as itself over its WebSocket, each post awaited (the SDK resends across moves).
 */
type SdkUser = { name: string; client: Client; board: Subscription<`leaderboard:${string}`>; room: Subscription<`chat:${string}`>; resyncs: number; gaps: number; posted: number; rejected: string[]; nodes: Set<string> }
const sdkUsers: SdkUser[] = []
async function startSdkUser(name: string, order: string[]): Promise<SdkUser> {
  const client = createClient({ urls: order, token: () => mintUserToken(vars.FANFARE_JWT_SECRET, { sub: name, ttlSeconds: 3600 }), backoff: { minMs: 200, maxMs: 1000 } })
  const u: SdkUser = { name, client, resyncs: 0, gaps: 0, posted: 0, rejected: [], nodes: new Set(), board: undefined as any, room: undefined as any }
  client.on('status', (st: any) => void (st.state === 'connected' && u.nodes.add(st.url)))
  client.on('error', (e: any) => void (String(e?.code ?? e).includes('gap') && u.gaps++))
  const track = () => {
    let last: number | undefined
    return {
      onUpdate: (_: unknown, i: { from: number; version: number }) => {
        if (last !== undefined && i.from !== last + 1) u.gaps++
        last = i.version
      },
      onResync: () => {
        u.resyncs++
        last = undefined
      },
    }
  }
  u.board = client.subscribe(`leaderboard:${BOARD}`, track())
  u.room = client.subscribe(`chat:${ROOM}`, track())
  await until(`${name} live`, () => u.board.status === 'live' && u.room.status === 'live', 30_000, 100)
  sdkUsers.push(u)
  return u
}
async function sdkChatLane(u: SdkUser) {
  for (let i = 0; running; i++) {
    sent.chat++
    try {
      await u.client.publish({ type: 'chat.message.posted', data: { room: ROOM, user: u.name, text: `${u.name} ${i}` } })
      acked.chat++
      u.posted++
    } catch (err) {
      u.rejected.push(String((err as Error)?.message ?? err).slice(0, 100))
    }
    await Bun.sleep(100)
  }
}

// ---------------------------------------------------------------------------------------------
// Subscribers: one raw WebSocket following every channel, moving to the other node when cut.

type View = { version: number; epoch: string; updates: number; snapshots: number; resyncs: number; gaps: number; repeats: number; state: any }

class Subscriber {
  views = new Map<string, View>()
  reconnects = 0
  resumed = 0
  closeCodes: Record<number, number> = {}
  errors: string[] = []
  decreases = 0
  nodesSeen = new Set<number>()
  private ws: WebSocket | undefined
  private stopped = false
  constructor(
    readonly name: string,
    private node: number,
  ) {}
  async start() {
    this.connect()
    await until(`${this.name} snapshots`, () => CHANNELS.every((c) => this.views.has(c)), 30_000, 100)
  }
  stop() {
    this.stopped = true
    this.ws?.close()
  }
  private connect() {
    const node = this.node
    const ws = new WebSocket(`${urls[node].replace('http', 'ws')}/v1/ws`)
    this.ws = ws
    ws.onopen = () => {
      this.nodesSeen.add(node)
      for (const channel of CHANNELS) {
        const v = this.views.get(channel)
        ws.send(JSON.stringify({ op: 'subscribe', ref: channel, channel, ...(v ? { since: v.version, epoch: v.epoch } : {}) }))
      }
    }
    ws.onmessage = (e) => this.onFrame(JSON.parse(String(e.data)))
    ws.onclose = (e) => {
      if (this.ws !== ws || this.stopped) return
      this.ws = undefined
      this.closeCodes[e.code] = (this.closeCodes[e.code] ?? 0) + 1
      this.reconnects++
      // Another node first, as a client with a list of URLs does; back to this one if refused.
      this.node = 1 - this.node
      setTimeout(() => !this.stopped && this.connect(), 200)
    }
  }
  private onFrame(f: any) {
    if (f.op === 'error') {
      this.errors.push(`${f.channel ?? ''} ${f.error?.code}`)
      if (f.ref && CHANNELS.includes(f.ref)) this.ws?.close()
      return
    }
    if (!CHANNELS.includes(f.channel)) return
    const kind = f.channel.split(':')[0]
    if (f.op === 'snapshot') {
      const v: View = this.views.get(f.channel) ?? { version: -1, epoch: '', updates: 0, snapshots: 0, resyncs: 0, gaps: 0, repeats: 0, state: undefined }
      v.snapshots++
      if (f.resync) v.resyncs++
      v.version = f.version
      v.epoch = f.epoch
      v.state = fromSnapshot(kind, f.data)
      this.views.set(f.channel, v)
    } else if (f.op === 'subscribed') {
      this.resumed++
    } else if (f.op === 'update') {
      const v = this.views.get(f.channel)
      if (!v) return
      v.updates++
      const from = f.from ?? f.version
      if (f.epoch !== v.epoch && v.version > 0) v.gaps++
      else if (f.version <= v.version) v.repeats++
      else if (from !== v.version + 1) v.gaps++
      v.version = Math.max(v.version, f.version)
      v.epoch = f.epoch
      applyUpdate(kind, v, f.data, this)
    }
  }
}

function fromSnapshot(kind: string, data: any): any {
  if (kind === 'leaderboard') return new Map(data.entries.map((e: any) => [e.player, e.score]))
  if (kind === 'chat') return { latest: data.messages.map((m: any) => m.id).reverse(), posted: 0 }
  if (kind === 'reactions') return { ...data.totals }
  if (kind === 'poll') return data
  return data
}

function applyUpdate(kind: string, v: View, data: any, s: Subscriber) {
  if (kind === 'leaderboard') {
    const before = v.state.get(data.player)
    if (before !== undefined && data.score < before) s.decreases++
    v.state.set(data.player, data.score)
  } else if (kind === 'chat') {
    if (data.kind === 'posted') {
      v.state.latest.push(data.message.id)
      v.state.posted++
    }
  } else if (kind === 'reactions') {
    Object.assign(v.state, data.totals)
  } else if (kind === 'poll') {
    v.state = data.poll
  }
}

// ---------------------------------------------------------------------------------------------
// Phases

async function restartApi(i: number, extra: Record<string, string> = {}) {
  const before = apis[i]
  await stopGracefully(before)
  const p = startApi(i, extra)
  const at = Date.now()
  await waitReady(urls[i], [p], 60_000)
  log(`${p.name} ready after ${Date.now() - at} ms`)
}

async function restartWorker(w: Proc) {
  await stopGracefully(w)
  workers.splice(workers.indexOf(w), 1)
  startWorker()
}

const phases: Record<string, () => Promise<void>> = {
  api: async () => {
    for (const i of [0, 1]) {
      await restartApi(i)
      await Bun.sleep(4000)
    }
  },
  workers: async () => {
    for (const w of [...workers]) {
      await restartWorker(w)
      await Bun.sleep(4000)
    }
  },
  scale: async () => {
    while (workers.length > 1) await stopGracefully(workers.pop()!)
    log('workers: 1')
    await Bun.sleep(4000)
    startWorker()
    startWorker()
    log('workers: 3')
    await Bun.sleep(8000)
    while (workers.length > 1) await stopGracefully(workers.pop()!)
    log('workers: 1')
    await Bun.sleep(4000)
  },
  /** Workers 1 -> 3 while `npm run migrate` runs, then back to 1. */
  'migrate-scale': async () => {
    while (workers.length > 1) await stopGracefully(workers.pop()!)
    await Promise.all([runMigrate(), (async () => (startWorker(), startWorker()))()])
    await Bun.sleep(6000)
    while (workers.length > 1) await stopGracefully(workers.pop()!)
    await Bun.sleep(3000)
  },
  migrate: async () => {
    await runMigrate()
    await Bun.sleep(3000)
  },
  config: async () => {
    await restartApi(0, CHANGED_CONFIG)
    await Bun.sleep(4000)
  },
}

// ---------------------------------------------------------------------------------------------

async function rest(path: string, node = 0) {
  const res = await fetch(`${urls[node]}${path}`, { headers: { authorization: `Bearer ${vars.FANFARE_ADMIN_TOKEN}` } })
  if (res.status !== 200) throw new Error(`GET ${path}: ${res.status} ${await res.text()}`)
  return res.json() as Promise<any>
}

async function main() {
  const admin = postgres(TEST_PG_URL, { max: 1, onnotice: () => {} })
  await admin.unsafe(`CREATE DATABASE ${dbName}`)
  await admin.end()
  const sql = postgres(dbUrl, { max: 2, onnotice: () => {} })
  const subs: Subscriber[] = []
  try {
    await nats.start()
    await runMigrate()
    startWorker()
    startWorker()
    startApi(0)
    startApi(1)
    for (const u of urls) await waitReady(u, procs, 60_000)
    await configureBoard(apiAt(apiPorts[0], vars), BOARD, 'latest')
    await sendUntilAcked('setup', [{ type: 'poll.opened', data: { stream: STREAM, poll: POLL, question: 'Who?', options: ['a', 'b', 'c'] } }], vars.FANFARE_INGEST_TOKEN, 0)
    await until('poll open', async () => (await fetch(`${urls[0]}/v1/polls/${POLL}`)).status === 200, 20_000, 200)
    for (let i = 0; i < 4; i++) subs.push(new Subscriber(`sub${i}`, i % 2))
    await Promise.all(subs.map((s) => s.start()))
    const sdk = [await startSdkUser('ann', urls), await startSdkUser('bob', [...urls].reverse())]
    log('deployment up, subscribers live; load starts')

    const lanes = [scoreLane(0), scoreLane(1), scoreLane(2), chatLane(), reactionLane(), voteLane(0), voteLane(1), ...sdk.map(sdkChatLane)]
    await Bun.sleep(5000)
    for (const phase of PHASES) {
      log(`phase ${phase}`)
      await phases[phase]()
      log(`phase ${phase} done: acked ${JSON.stringify(acked)}`)
    }
    await Bun.sleep(3000)
    running = false
    await Promise.all(lanes)
    const loadSeconds = (Date.now() - t0) / 1000
    log(`load stopped: sent ${JSON.stringify(sent)} acked ${JSON.stringify(acked)}`)

    // Drain: the board's version reaches 1 + acked scores, chat count reaches acked, and so on.
    const boardVersion = async () => Number((await sql`SELECT version FROM channel_versions WHERE channel = ${`leaderboard:${BOARD}`}`)[0]?.version ?? 0)
    const chatCount = async () => Number((await sql`SELECT count(*)::int AS n FROM chat_messages WHERE room = ${ROOM}`)[0].n)
    await until('drained', async () => (await boardVersion()) >= 1 + acked.scores && (await chatCount()) >= acked.chat, 120_000, 500).catch((e) => problems.push(String(e)))
    await Bun.sleep(3000)
    const versions = Object.fromEntries(
      (await sql`SELECT channel, version FROM channel_versions WHERE channel = ANY(${CHANNELS})`).map((r) => [r.channel as string, Number(r.version)]),
    )
    await until('subscribers at the read model', () => subs.every((s) => CHANNELS.every((c) => s.views.get(c)!.version >= versions[c])), 30_000, 200).catch((e) => problems.push(String(e)))

    // Oracle vs read models.
    if (versions[`leaderboard:${BOARD}`] !== 1 + acked.scores) problems.push(`board version ${versions[`leaderboard:${BOARD}`]} != 1 + ${acked.scores} acknowledged scores`)
    const chat = await chatCount()
    if (chat !== acked.chat) problems.push(`chat messages ${chat} != ${acked.chat} acknowledged`)
    if (versions[`chat:${ROOM}`] !== acked.chat) problems.push(`chat version ${versions[`chat:${ROOM}`]} != ${acked.chat}`)
    const board = new Map<string, number>((await rest(`/v1/leaderboards/${BOARD}?limit=100`)).entries.map((e: any) => [e.player, e.score]))
    for (const [p, s] of latest) if (board.get(p) !== s) problems.push(`REST board ${p}: ${board.get(p)} != last acked ${s}`)
    const totals = (await rest(`/v1/streams/${STREAM}/reactions`)).totals
    if (!Bun.deepEquals(totals, reactionOracle)) problems.push(`reaction totals ${JSON.stringify(totals)} != acked ${JSON.stringify(reactionOracle)}`)
    const poll = await rest(`/v1/polls/${POLL}`)
    const tallies = poll.options.map((o: any) => o.votes)
    if (!Bun.deepEquals(tallies, voteOracle)) problems.push(`poll tallies ${tallies} != acked ${voteOracle} (ignored ${poll.ignoredVotes})`)
    const dead = Number((await sql`SELECT count(*)::int AS n FROM dead_letters`)[0].n)
    if (dead > 0) problems.push(`${dead} dead letters`)
    const lostAnswers = Object.entries(answers).filter(([k]) => k.includes('found stored'))
    for (const [k, n] of lostAnswers) problems.push(`${n} requests taken by a stopping node and cut unanswered (${k})`)
    if (freshDuplicates > 0) problems.push(`${freshDuplicates} fresh batches answered duplicate`)
    const lastMessages: string[] = (await rest(`/v1/rooms/${ROOM}/messages?limit=50`)).messages.map((m: any) => m.id).reverse()

    // Each subscriber vs the read models.
    for (const s of subs) {
      for (const c of CHANNELS) {
        const v = s.views.get(c)!
        if (v.gaps) problems.push(`${s.name} ${c}: ${v.gaps} silent gaps`)
        if (v.repeats) problems.push(`${s.name} ${c}: ${v.repeats} repeats`)
        if (v.version !== versions[c]) problems.push(`${s.name} ${c}: version ${v.version} != ${versions[c]}`)
      }
      if (s.decreases) problems.push(`${s.name}: ${s.decreases} scores went down`)
      const sb = s.views.get(`leaderboard:${BOARD}`)!.state as Map<string, number>
      for (const [p, sc] of board) if (sb.get(p) !== sc) problems.push(`${s.name} board ${p}: ${sb.get(p)} != REST ${sc}`)
      const sr = s.views.get(`reactions:${STREAM}`)!.state
      if (!Bun.deepEquals(sr, totals)) problems.push(`${s.name} reactions ${JSON.stringify(sr)} != REST ${JSON.stringify(totals)}`)
      const sp = s.views.get(`poll:${POLL}`)!.state.options.map((o: any) => o.votes)
      if (!Bun.deepEquals(sp, tallies)) problems.push(`${s.name} poll ${sp} != REST ${tallies}`)
      const sc = s.views.get(`chat:${ROOM}`)!.state.latest.slice(-50)
      if (!Bun.deepEquals(sc, lastMessages)) problems.push(`${s.name} chat latest 50 != REST`)
      if (s.errors.length) notes.push(`${s.name}: error frames ${s.errors.slice(0, 10).join(', ')}`)
    }
    const restRoom = (await rest(`/v1/rooms/${ROOM}/messages?limit=50`)).messages
    for (const u of sdkUsers) {
      if (u.gaps) problems.push(`${u.name} (SDK): ${u.gaps} gaps`)
      if (u.rejected.length) problems.push(`${u.name} (SDK): ${u.rejected.length} publishes rejected: ${u.rejected.slice(0, 3).join('; ')}`)
      const held = u.board.state?.entries.map((e) => [e.player, e.score])
      const restTop = (await rest(`/v1/leaderboards/${BOARD}?limit=100`)).entries.map((e: any) => [e.player, e.score])
      if (!Bun.deepEquals(held, restTop)) problems.push(`${u.name} (SDK): board != REST`)
      if (!Bun.deepEquals(u.room.state?.messages, restRoom)) problems.push(`${u.name} (SDK): room != REST`)
      console.log(`${u.name} (SDK): posted ${u.posted}, nodes ${[...u.nodes].length}, board v${u.board.version}, room v${u.room.version}, resyncs ${u.resyncs}, gaps ${u.gaps}`)
    }
    for (const p of procs) {
      const errs = p.output().split('\n').filter((l) => /"level":(50|60)/.test(l))
      if (errs.length) notes.push(`${p.name}: ${errs.length} error log lines, first: ${errs[0].slice(0, 600)}`)
    }

    console.log('\n=== summary')
    console.log(`load ${loadSeconds.toFixed(0)} s: sent ${JSON.stringify(sent)}, acknowledged ${JSON.stringify(acked)} (${Math.round((acked.scores + acked.chat + acked.reactions + acked.votes) / loadSeconds)}/s)`)
    console.log(`answers: ${Object.entries(answers).sort().map(([k, n]) => `${k} x${n}`).join('; ')}`)
    console.log(`read model: versions ${JSON.stringify(versions)}, chat ${chat}, reactions ${JSON.stringify(totals)}, poll ${tallies}, dead letters ${dead}`)
    for (const s of subs)
      console.log(
        `${s.name}: nodes ${[...s.nodesSeen]}, reconnects ${s.reconnects} (closes ${JSON.stringify(s.closeCodes)}), resumed ${s.resumed}, ` +
          CHANNELS.map((c) => {
            const v = s.views.get(c)!
            return `${c.split(':')[0]} v${v.version} u${v.updates} snap${v.snapshots} resync${v.resyncs} gaps${v.gaps}`
          }).join(', '),
      )
    for (const n of notes) console.log(`note: ${n}`)
    for (const p of problems) console.log(`BROKEN: ${p}`)
    console.log(problems.length ? 'BROKEN' : 'OK')
    return problems.length === 0
  } finally {
    for (const s of subs) s.stop()
    for (const u of sdkUsers) u.client.close()
    await Promise.all(procs.map((p) => p.stop('SIGKILL')))
    if (KEEP) for (const p of procs) await Bun.write(join(storeDir, `${p.name}.log`), p.output())
    await sql.end({ timeout: 5 })
    await nats.stop()
    const a = postgres(TEST_PG_URL, { max: 1, onnotice: () => {} })
    await a.unsafe(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`)
    await a.end()
    if (KEEP) console.log(`logs in ${storeDir}`)
    else rmSync(storeDir, { recursive: true, force: true })
  }
}

process.exit((await main()) ? 0 : 1)
