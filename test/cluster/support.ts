import { expect } from 'bun:test'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import postgres from 'postgres'
import { createClient, type Client, type CloseReason, type StateOf, type Subscription } from '../../client/src'
import { createTestEnv, type TestEnv } from '../../core/testing/env'
import { freePort, spawnProc, until, waitReady, type Proc, type WsClient } from '../e2e/harness'
import { privateNats, type PrivateNats, type PrivateNatsOptions } from './private-nats'
import { createFanfareDatabase, createPrivatePostgres, type PrivatePostgres } from './private-postgres'
import { tcpProxy, type TcpProxy } from '../../core/testing/tcp-proxy'

/** An ingest client for one deployment: posts batches, reports status and body. */
export type Api = { baseUrl: string; ingestToken: string; adminToken: string }

/** The Api of a node listening on `port` of 127.0.0.1 with the tokens of `vars`. */
export function apiAt(port: number, vars: Record<string, string>): Api {
  return { baseUrl: `http://127.0.0.1:${port}`, ingestToken: vars.FANFARE_INGEST_TOKEN, adminToken: vars.FANFARE_ADMIN_TOKEN }
}

/**
 * Environment for the API and worker nodes of one deployment: `envVars` with `overrides` (a
 * private server's DATABASE_URL or NATS_URL, ...), the API listening on a free port of 127.0.0.1;
 * and the Api of that node and its port.
 */
export function nodeVars(envVars: Record<string, string>, overrides: Record<string, string> = {}): { vars: Record<string, string>; api: Api; port: number } {
  const port = freePort()
  const vars: Record<string, string> = { ...envVars, ...overrides, PORT: String(port), HOST: '127.0.0.1' }
  return { vars, api: apiAt(port, vars), port }
}

/** A deployment on a private Postgres cluster: see privatePostgresDeployment. */
export type PrivatePostgresDeployment = {
  pg: PrivatePostgres
  databaseUrl: string
  env: TestEnv
  vars: Record<string, string>
  api: Api
  /** Destroys the cluster and cleans the env (stop the nodes first). */
  close: () => Promise<void>
}

/**
 * A deployment whose database is on its own Postgres cluster, which the test may stop, restart or
 * reconfigure, and whose streams are on the machine's NATS: the cluster started on a free port,
 * its database `fanfare` created and migrated, a test env with `overrides`, and the nodes' vars
 * and Api (nodeVars).
 */
export async function privatePostgresDeployment(overrides: Record<string, string>): Promise<PrivatePostgresDeployment> {
  const pg = await createPrivatePostgres(freePort())
  try {
    await pg.start()
    const { admin, databaseUrl } = await createFanfareDatabase(pg)
    await admin.end()
    const env = await createTestEnv(overrides)
    const close = async () => {
      await pg.destroy()
      await env.cleanup()
    }
    return { pg, databaseUrl, env, ...nodeVars(env.vars, { DATABASE_URL: databaseUrl }), close }
  } catch (err) {
    await pg.destroy()
    throw err
  }
}

/** A deployment on a private nats-server: see privateNatsDeployment. */
export type PrivateNatsDeployment = {
  nats: PrivateNats
  env: TestEnv
  vars: Record<string, string>
  api: Api
  /** The API node's port. */
  port: number
  /** Stops the server, cleans the env and deletes the server's store (stop the nodes first). */
  close: () => Promise<void>
}

/**
 * An API node and a worker of a deployment, added to `procs` (for the test's teardown), once the
 * API node is ready. `only` changes vars of one of them (the API node's path to Postgres through a
 * proxy, the worker's log level, ...).
 */
export async function startNodes(
  d: Pick<PrivateNatsDeployment, 'vars' | 'api'>,
  procs: Proc[],
  only: { api?: Record<string, string>; worker?: Record<string, string> } = {},
): Promise<{ apiProc: Proc; workerProc: Proc }> {
  // Readiness is asked of d.api: a node listening elsewhere would be reported ready by another.
  for (const v of ['PORT', 'HOST'] as const) if (only.api?.[v] !== undefined) throw new Error(`startNodes: the API node's ${v} is the deployment's (nodeVars), not an override`)
  const apiProc = spawnProc('api', 'api/src/main.ts', { ...d.vars, ...only.api })
  const workerProc = spawnProc('worker', 'stream-workers/src/main.ts', { ...d.vars, ...only.worker })
  procs.push(apiProc, workerProc)
  await waitReady(d.api.baseUrl, procs)
  return { apiProc, workerProc }
}

/**
 * A deployment whose streams are on its own nats-server, which the test may stop, restart or
 * fill (`natsOptions`: more of its settings), and whose database is a fresh one on the machine's
 * Postgres: the server started on a free port with a new store directory, a test env with
 * `overrides` (its cleanup's stream deletion on the machine's NATS then finds nothing, which it
 * ignores), and the nodes' vars and Api (nodeVars).
 */
export async function privateNatsDeployment(
  name: string,
  overrides: Record<string, string>,
  natsOptions: Omit<PrivateNatsOptions, 'port' | 'storeDir'> = {},
): Promise<PrivateNatsDeployment> {
  const storeDir = mkdtempSync(join(tmpdir(), `fanfare-${name}-`))
  let nats: PrivateNats | undefined
  try {
    nats = privateNats({ port: freePort(), storeDir, ...natsOptions })
    await nats.start()
    const env = await createTestEnv(overrides)
    const close = async () => {
      await nats!.stop()
      await env.cleanup()
      rmSync(storeDir, { recursive: true, force: true })
    }
    return { nats, env, ...nodeVars(env.vars, { NATS_URL: nats.url }), close }
  } catch (err) {
    await nats?.stop()
    rmSync(storeDir, { recursive: true, force: true })
    throw err
  }
}

export type ScoreEvent = { id: string; type: 'score.submitted'; data: { board: string; player: string; score: number } }

/** Makes a score event with a caller-chosen id (resending it must be de-duplicated). */
export const scoreEvent = (id: string, board: string, player: string, score: number): ScoreEvent => ({
  id,
  type: 'score.submitted',
  data: { board, player, score },
})

/** Each player's total score in `events`: a `sum` board's oracle. */
export function sumsOf(events: Iterable<ScoreEvent>): Map<string, number> {
  const sums = new Map<string, number>()
  for (const e of events) sums.set(e.data.player, (sums.get(e.data.player) ?? 0) + e.data.score)
  return sums
}

/** POSTs a batch as `token`; a request unanswered in `timeoutMs` is status 0 (`timeout`), a cut one status 0 (`connection`). */
export async function postAs(baseUrl: string, token: string, events: readonly object[], timeoutMs = 15_000): Promise<{ status: number; body: any }> {
  try {
    const res = await fetch(`${baseUrl}/v1/events`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      body: JSON.stringify({ events }),
      signal: AbortSignal.timeout(timeoutMs),
    })
    return { status: res.status, body: await res.json().catch(() => null) }
  } catch (err) {
    const name = (err as Error)?.name
    return { status: 0, body: { error: { code: name === 'TimeoutError' ? 'timeout' : 'connection', message: String(err) } } }
  }
}

/** POSTs a batch with the ingest token (see postAs). */
export const postEvents = (api: Api, events: ScoreEvent[], timeoutMs = 15_000) => postAs(api.baseUrl, api.ingestToken, events, timeoutMs)

/** Sets a board's rules through the admin API; throws unless 200. */
export async function configureBoard(api: Api, board: string, operator: 'latest' | 'sum' | 'best') {
  const res = await fetch(`${api.baseUrl}/admin/leaderboards/${board}`, {
    method: 'PUT',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${api.adminToken}` },
    body: JSON.stringify({ operator }),
  })
  if (res.status !== 200) throw new Error(`PUT /admin/leaderboards/${board}: ${res.status} ${await res.text()}`)
}

/**
 * The version of the channel of a board configured (configureBoard) before its first score, after
 * `changes` changes: setting its rules restarted the channel at version 1 (see putBoardConfig).
 */
export const configuredVersion = (changes: number) => 1 + changes

/** What the read models hold, read straight from Postgres. */
export type ReadModel = {
  scores: (board: string) => Promise<Map<string, number>>
  /** A channel's version: exactly the number of changes applied to it. */
  version: (channel: string) => Promise<number>
  deadLetters: () => Promise<number>
  close: () => Promise<void>
}

export function readModel(databaseUrl: string): ReadModel {
  const sql = postgres(databaseUrl, { max: 2, onnotice: () => {} })
  return {
    scores: async (board) => {
      const rows = await sql`SELECT player, score FROM leaderboard_entries WHERE board = ${board}`
      return new Map(rows.map((r) => [r.player as string, Number(r.score)]))
    },
    version: async (channel) => {
      const rows = await sql`SELECT version FROM channel_versions WHERE channel = ${channel}`
      return rows.length ? Number(rows[0].version) : 0
    },
    deadLetters: async () => Number((await sql`SELECT count(*)::int AS n FROM dead_letters`)[0].n),
    close: () => sql.end({ timeout: 5 }),
  }
}

/** Differences between a board and its oracle, at most `max` of them (empty when equal). */
export function diff(actual: Map<string, number>, oracle: Map<string, number>, max = 5): string[] {
  const out: string[] = []
  for (const [player, score] of oracle) {
    if (actual.get(player) !== score) out.push(`${player}: expected ${score}, got ${actual.get(player)}`)
    if (out.length >= max) return out
  }
  for (const player of actual.keys()) {
    if (!oracle.has(player)) out.push(`${player}: unexpected`)
    if (out.length >= max) return out
  }
  return out
}

/** Polls until `board` equals `oracle`; throws with the remaining differences at the deadline. */
export async function untilBoardEquals(rm: ReadModel, board: string, oracle: Map<string, number>, timeoutMs: number) {
  let last: string[] = []
  try {
    await until(
      `board ${board} to equal its oracle`,
      async () => {
        last = diff(await rm.scores(board), oracle)
        return last.length === 0
      },
      timeoutMs,
      250,
    )
  } catch (err) {
    throw new Error(`${(err as Error).message}; first differences: ${last.join('; ')}`)
  }
}

/**
 * Every acknowledged score of a sum board applied exactly once: the board equals the total of
 * `acked` (waiting up to `timeoutMs` for the workers; a timeout's error carries the tail of
 * `worker`'s log when given), its channel's version is one change per event after the restart
 * configuring the board made (configuredVersion), and nothing was dead-lettered.
 */
export async function expectAppliedOnce(rm: ReadModel, board: string, acked: ScoreEvent[], timeoutMs: number, worker?: Proc) {
  await untilBoardEquals(rm, board, sumsOf(acked), timeoutMs).catch((err) => {
    if (!worker) throw err
    throw new Error(`${(err as Error).message}\n${worker.name} exit ${worker.proc.exitCode}, log tail:\n${worker.output().slice(-4000)}`)
  })
  expect(await rm.version(`leaderboard:${board}`)).toBe(configuredVersion(acked.length))
  expect(await rm.deadLetters()).toBe(0)
}

/**
 * Waits until a channel's version reads the same twice, a second apart, and above 0: the workers
 * applied what was stored. Returns it.
 */
export async function untilVersionSettles(rm: ReadModel, channel: string, timeoutMs: number): Promise<number> {
  let version = -1
  await until(
    'the read model to settle',
    async () => {
      const v = await rm.version(channel)
      const settled = v === version && v > 0
      version = v
      return settled
    },
    timeoutMs,
    1000,
  )
  return version
}

/**
 * Configures sum board `board` and returns `post`, which sends one batch of 10 scores (players
 * p0-p9, each 1 + n % `cycle` for the batch's running count n), expects it acknowledged (ingest
 * needs only NATS) and keeps it in `acked`.
 */
export async function sumBoardPoster(api: Api, board: string, cycle: number): Promise<{ acked: ScoreEvent[]; post: () => Promise<void> }> {
  await configureBoard(api, board, 'sum')
  const acked: ScoreEvent[] = []
  let n = 0
  const post = async () => {
    const batch = Array.from({ length: 10 }, (_, p) => scoreEvent(`${board}-${n++}`, board, `p${p}`, 1 + (n % cycle)))
    const res = await postEvents(api, batch)
    expect(res.status).toBe(202)
    acked.push(...batch)
  }
  return { acked, post }
}

/** Stops each process with SIGTERM, one after another; a non-zero exit fails with its log tail. */
export async function stopCleanly(...procs: Proc[]) {
  for (const p of procs) {
    const code = await p.stop('SIGTERM')
    if (code !== 0) throw new Error(`${p.name} exited ${code} on SIGTERM:\n${p.output().slice(-3000)}`)
  }
}

/**
 * POSTs a batch until it is stored, as clients do. A 429 `rate_limited` stored nothing (a load can
 * pass the bootstrap key's per-node rate on a fast machine): it waits as told and sends again, not
 * an attempt the availability figures count. A 503 `unavailable` is an honest answer (the node's
 * NATS connection blipped, a stream is electing its leader): the same ids are resent, which
 * JetStream de-duplicates, 10 times or for `resendForMs`, whichever allows more. Returns the last
 * answer (a request unanswered for 30 s is status 0) and how many resends it took.
 */
export async function postStored(
  api: Api,
  batch: ScoreEvent[],
  opts: { resendForMs?: number; onAttempt?: (a: Attempt) => void } = {},
): Promise<{ status: number; body: any; resends: number }> {
  const attempt = async () => {
    for (;;) {
      const startedAt = Date.now()
      const res = await postEvents(api, batch, 30_000)
      if (res.status === 429 && res.body?.error?.code === 'rate_limited') {
        await Bun.sleep(Number(res.body.error.details?.retryAfterMs ?? 100))
        continue
      }
      opts.onAttempt?.({ api: api.baseUrl, startedAt, endedAt: Date.now(), status: res.status, code: res.body?.error?.code })
      return res
    }
  }
  const giveUpAt = Date.now() + (opts.resendForMs ?? 0)
  let res = await attempt()
  let resends = 0
  while (res.status === 503 && res.body?.error?.code === 'unavailable' && (resends < 10 || Date.now() < giveUpAt)) {
    resends++
    await Bun.sleep(250)
    res = await attempt()
  }
  return { ...res, resends }
}

/**
 * What a deployment acknowledged for a run's two boards: the oracle read models and subscribers
 * are compared with. `latest` holds each player's last acknowledged score (a reordered apply
 * leaves another value), `sum` the total of their acknowledged scores, `applied` the number of
 * acknowledged events per board (each is one change, so a channel's version must equal it: more
 * means an event applied twice).
 */
export type Oracle = {
  latestBoard: string
  sumBoard: string
  latest: Map<string, number>
  sum: Map<string, number>
  applied: Map<string, number>
  /** Requests sent, and attempts answered 503 `unavailable` (then resent with the same ids). */
  requests: number
  unavailable: number
}

/** One POST attempt, for measuring outages: when it was sent, when answered, and how. */
export type Attempt = { api: string; startedAt: number; endedAt: number; status: number; code?: string }

/**
 * Sends rounds of score events to both boards through `apis` (round-robin, `inFlight` requests at
 * once) and records what was acknowledged in an Oracle. One round in flight at a time: a key's
 * next event is sent only after its previous one was acknowledged, so "the last event sent" is
 * well defined even across nodes. Scores vary per round (not monotone). Each batch is sent as
 * postStored sends it; any other final answer but 202 (a request unanswered for 30 s included)
 * and a fresh event reported duplicate fail the run.
 * `beforeRound` injects faults; rounds go on while `more(round)` is true.
 */
export async function ingestRounds(opts: {
  apis: Api[]
  run: string
  players: number
  more: (round: number) => boolean
  batch: number
  inFlight: number
  resendForMs?: number
  beforeRound?: (round: number) => void | Promise<void>
  onAttempt?: (a: Attempt) => void
}): Promise<Oracle> {
  const o: Oracle = {
    latestBoard: `latest_${opts.run}`,
    sumBoard: `sum_${opts.run}`,
    latest: new Map(),
    sum: new Map(),
    applied: new Map(),
    requests: 0,
    unavailable: 0,
  }
  o.applied.set(o.latestBoard, 0).set(o.sumBoard, 0)
  await configureBoard(opts.apis[0], o.latestBoard, 'latest')
  await configureBoard(opts.apis[opts.apis.length - 1], o.sumBoard, 'sum')
  const scoreOf = (p: number, r: number) => 1 + ((p * 7919 + r * 104_729) % 1000)

  for (let r = 0; opts.more(r); r++) {
    await opts.beforeRound?.(r)
    const events: ScoreEvent[] = []
    for (let p = 0; p < opts.players; p++) {
      const player = `p${p}`
      const score = scoreOf(p, r)
      events.push(scoreEvent(`${opts.run}-l-${p}-${r}`, o.latestBoard, player, score))
      events.push(scoreEvent(`${opts.run}-s-${p}-${r}`, o.sumBoard, player, score))
    }
    const batches: ScoreEvent[][] = []
    for (let i = 0; i < events.length; i += opts.batch) batches.push(events.slice(i, i + opts.batch))
    let next = 0
    const lane = async () => {
      while (next < batches.length) {
        const batch = batches[next++]
        const api = opts.apis[o.requests++ % opts.apis.length]
        const { resends, ...res } = await postStored(api, batch, opts)
        o.unavailable += resends
        if (res.status !== 202) throw new Error(`POST ${api.baseUrl}/v1/events: ${res.status} ${JSON.stringify(res.body)}`)
        if (res.body.results.length !== batch.length) throw new Error(`${res.body.results.length} results for ${batch.length} events`)
        for (const [i, e] of batch.entries()) {
          // Only acknowledged events go into the oracle. A resend may find some already stored.
          if (res.body.results[i].duplicate && resends === 0) throw new Error(`fresh event ${e.id} reported duplicate`)
          const { board, player, score } = e.data
          if (board === o.latestBoard) o.latest.set(player, score)
          else o.sum.set(player, (o.sum.get(player) ?? 0) + score)
          o.applied.set(board, o.applied.get(board)! + 1)
        }
      }
    }
    await Promise.all(Array.from({ length: opts.inFlight }, lane))
  }
  return o
}

/**
 * The read models equal the oracle: both boards (waiting up to `timeoutMs` for the workers), each
 * channel's version equal to the events acknowledged for it (none applied twice; after the restart
 * configuring it made, see configuredVersion), no dead letters.
 */
export async function expectReadModelsMatch(rm: ReadModel, o: Oracle, timeoutMs: number) {
  await untilBoardEquals(rm, o.latestBoard, o.latest, timeoutMs)
  await untilBoardEquals(rm, o.sumBoard, o.sum, timeoutMs)
  const versions = [await rm.version(`leaderboard:${o.latestBoard}`), await rm.version(`leaderboard:${o.sumBoard}`)]
  if (versions[0] !== configuredVersion(o.applied.get(o.latestBoard)!) || versions[1] !== configuredVersion(o.applied.get(o.sumBoard)!)) {
    throw new Error(`channel versions ${versions.join(', ')}, events acknowledged ${o.applied.get(o.latestBoard)}, ${o.applied.get(o.sumBoard)}: an event applied twice or lost`)
  }
  const dead = await rm.deadLetters()
  if (dead !== 0) throw new Error(`${dead} dead letters`)
}

/**
 * A subscriber's view of a board, built only from its frames; throws on a gap or a repeat, and
 * (with `increasing`) on a player's score going down between two updates, which, when every
 * player's scores are sent rising, is an event applied out of its key's order.
 */
export class BoardView {
  board = new Map<string, number>()
  version = -1
  resyncs = 0
  private seen = 0
  constructor(
    readonly client: WsClient,
    readonly opts: { increasing?: boolean } = {},
  ) {}
  /** Applies the frames received since the last call. */
  catchUp(channel: string) {
    const frames = this.client.of(channel)
    for (; this.seen < frames.length; this.seen++) {
      const f = frames[this.seen]
      if (f.op === 'snapshot') {
        if (this.seen > 0 && !f.resync) throw new Error('a second snapshot not marked resync')
        if (f.resync) this.resyncs++
        this.board = new Map(f.data.entries.map((e: { player: string; score: number }) => [e.player, e.score]))
        this.version = f.version
      } else {
        if (f.version !== this.version + 1) throw new Error(`update ${f.version} after ${this.version}: a gap or a repeat`)
        const before = this.board.get(f.data.player)
        if (this.opts.increasing && before !== undefined && f.data.score <= before) {
          throw new Error(`${f.data.player}: score ${f.data.score} after ${before} (version ${f.version}): out of order`)
        }
        this.board.set(f.data.player, f.data.score)
        this.version = f.version
      }
    }
    return this
  }
}

/** What a Subscriber saw of one channel. */
export type ChannelLog = {
  /**
   * How each connection's subscribe was answered: `snapshot` (a fresh subscribe), `subscribed`
   * (a resume: the missed updates follow) or `resync` (a resume answered with a snapshot marked
   * resync). The first connection's is a snapshot; each later one answers a resume.
   */
  answers: ('snapshot' | 'subscribed' | 'resync')[]
  /** Snapshots marked resync sent on a connection already following the channel (the node re-synced it). */
  nodeResyncs: number
  /** Update frames received, and updates the SDK applied: equal unless a frame repeated a version. */
  updateFrames: number
  applied: number
  /** Breaches of the protocol seen in the frames (an update not following the state held, ...). */
  problems: string[]
}

/**
 * A subscriber as users run one: the SDK's client (client/), which reconnects whenever its socket
 * drops (a 4008 slow-consumer close included, at once and to the next of `urls`) and resumes
 * each channel from its version. What it received is logged per channel (see ChannelLog), read
 * from the frames on the wire and from the SDK's callbacks, so a test can tell a resume that
 * filled the missed updates from a plain resync, and neither from a silent gap.
 *
 * `pause()` stops reading its current socket (the server sees TCP backpressure, as from a client
 * that cannot keep up); `resume()` reads again. `holdReconnects()` makes its connection attempts
 * fail (as a client whose network is down) until the function it returns is called, with the node
 * the next connection must reach (attempts to the others go on failing): a test can then change
 * channels while the subscriber is surely cut off, knowing the versions it holds.
 */
export type Subscriber = {
  client: Client
  subscriptions: Map<string, Subscription<string>>
  logs: Map<string, ChannelLog>
  /** Each connection's URL, and how it ended. */
  connections: { url: string; closed?: CloseReason }[]
  /** What the client reported: a gap it repaired, a refused subscription, a listener that threw. */
  errors: string[]
  pause: () => void
  resume: () => void
  holdReconnects: () => (to?: string) => void
}

/** An address nothing listens on (the discard port): a connection attempt to it fails at once. */
const UNREACHABLE = 'ws://127.0.0.1:9/v1/ws'

export function subscriber(urls: string[], channels: string[], opts: { pingIntervalMs?: number; backoff?: { minMs?: number; maxMs?: number } } = {}): Subscriber {
  const logs = new Map<string, ChannelLog>()
  const errors: string[] = []
  const connections: Subscriber['connections'] = []
  const sockets: WebSocket[] = []
  /** While set, only connection attempts it admits reach their node. */
  let admits: ((url: string) => boolean) | undefined
  for (const channel of channels) logs.set(channel, { answers: [], nodeResyncs: 0, updateFrames: 0, applied: 0, problems: [] })
  // Update frames start `{"op":"update","channel":"<channel>",` (see the hub's frames): counted without parsing.
  const updatePrefixes = channels.map((channel) => [`{"op":"update","channel":${JSON.stringify(channel)},`, channel] as const)

  class TappedWebSocket extends WebSocket {
    constructor(url: string | URL, protocols?: string | string[]) {
      const through = !admits || admits(String(url))
      if (through) admits = undefined
      super(through ? url : UNREACHABLE, protocols)
      sockets.push(this)
      const answered = new Set<string>()
      this.addEventListener('message', (ev) => {
        // A socket the SDK has left (it is closing it) may still deliver: the SDK ignores those frames.
        if (sockets.at(-1) !== this) return
        const text = String(ev.data)
        if (text.startsWith('{"op":"update"')) {
          const channel = updatePrefixes.find(([prefix]) => text.startsWith(prefix))?.[1]
          if (channel) logs.get(channel)!.updateFrames++
          return
        }
        const f = JSON.parse(text)
        const log = logs.get(f.channel)
        if (!log || (f.op !== 'snapshot' && f.op !== 'subscribed')) return
        const kind = f.op === 'subscribed' ? 'subscribed' : f.resync ? 'resync' : 'snapshot'
        if (!answered.has(f.channel)) {
          answered.add(f.channel)
          log.answers.push(kind)
          if (log.answers.length > 1 && kind === 'snapshot') log.problems.push('a resume answered with a snapshot not marked resync')
        } else if (kind === 'resync') log.nodeResyncs++
        else log.problems.push(`a ${kind} frame on a connection already following the channel`)
      })
    }
  }

  const client = createClient({ urls, WebSocket: TappedWebSocket, pingIntervalMs: opts.pingIntervalMs, backoff: opts.backoff })
  client.on('status', (s) => {
    if (s.state === 'connected') connections.push({ url: s.url })
    else if ((s.state === 'reconnecting' || s.state === 'closed') && connections.length > 0 && !connections.at(-1)!.closed) connections.at(-1)!.closed = s.reason
  })
  client.on('error', (err) => errors.push(`${err.code}: ${err.message}`))
  const subscriptions = new Map<string, Subscription<string>>()
  for (const channel of channels) {
    const log = logs.get(channel)!
    let version: number | undefined
    const sub = client.subscribe(channel, {
      // Checked here as well as in the SDK: every update follows the state held, or a snapshot replaced it.
      onUpdate: (_, info) => {
        log.applied++
        if (version !== undefined && info.from !== version + 1) log.problems.push(`update ${info.from}..${info.version} applied on version ${version}`)
      },
      onState: (_, info) => void (version = info.version),
      onError: (err) => errors.push(`${channel}: ${err.code}: ${err.message}`),
    })
    subscriptions.set(channel, sub)
  }
  return {
    client,
    subscriptions,
    logs,
    connections,
    errors,
    pause: () => void (sockets.at(-1) as unknown as { pause: () => boolean }).pause(),
    resume: () => void (sockets.at(-1) as unknown as { resume: () => boolean }).resume(),
    holdReconnects: () => {
      admits = () => false
      return (to) => void (admits = to === undefined ? undefined : (url) => url.startsWith(to.replace(/^http/, 'ws')))
    },
  }
}

/** A subscriber's board (its state of `leaderboard:<board>`) as REST shows one: rank, player, score. */
export function entriesOf(state: StateOf<'leaderboard:x'> | undefined) {
  return (state?.entries ?? []).map(({ rank, player, score }) => ({ rank, player, score }))
}

/**
 * A private NATS server (JetStream store in a temporary directory) and a TCP proxy in front of it,
 * for nodes whose path to NATS a test cuts or stalls: they connect to `proxiedUrl`, the others to
 * `nats.url`. `stop` closes the proxy, stops the server and deletes its store.
 */
export type ProxiedNats = { nats: PrivateNats; proxy: TcpProxy; proxiedUrl: string; stop: () => Promise<void> }

export async function startProxiedNats(name: string): Promise<ProxiedNats> {
  const storeDir = mkdtempSync(join(tmpdir(), `fanfare-${name}-`))
  const nats = privateNats({ port: freePort(), storeDir })
  try {
    await nats.start()
  } catch (err) {
    rmSync(storeDir, { recursive: true, force: true })
    throw err
  }
  const proxy = tcpProxy({ port: freePort(), target: { host: '127.0.0.1', port: Number(new URL(nats.url).port) } })
  return {
    nats,
    proxy,
    proxiedUrl: `nats://127.0.0.1:${proxy.port}`,
    stop: async () => {
      proxy.close()
      await nats.stop()
      rmSync(storeDir, { recursive: true, force: true })
    },
  }
}
