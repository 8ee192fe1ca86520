/**
 * What the outside soaks share (bench/fault-soak.ts, bench/cluster-soak.ts): a fresh clone to run
 * Fanfare from, raw WebSocket subscribers that follow one board and resume with their version,
 * lanes of REST clients that resend refused batches with the same ids, and the verdict that
 * compares what was acknowledged with the read model, the REST board and every subscriber.
 */
import { realpathSync, symlinkSync } from 'node:fs'
import { join } from 'node:path'
import { until } from '../../core/testing/wait'
import { configuredVersion, diff, postEvents, readModel, scoreEvent, type Api, type ScoreEvent } from '../../test/cluster/support'

export const BOARD = 'soak'
export const CHANNEL = `leaderboard:${BOARD}`
export const LANES = 4
export const BATCH = 100
/** Players per lane: 4 x 25 = 100, the most a leaderboard snapshot holds, so a view is the whole board. */
export const PLAYERS_PER_LANE = 25
/** A batch still refused after this long is given up (its events counted sent, not acknowledged). */
export const GIVE_UP_MS = 60_000
export const DRAIN_TIMEOUT_MS = 90_000
/** The read model's version standing still this long short of the acknowledged count ends the drain. */
export const STALL_MS = 20_000

export type Checkout = { dir: string; commit: string }

/** A fresh clone of `repo`'s checked-out commit, its node_modules a link to the repo's. */
export async function cloneCheckout(repo: string, into: string): Promise<Checkout> {
  const git = async (...args: string[]) => {
    const p = Bun.spawn(['git', ...args], { stdout: 'pipe', stderr: 'pipe' })
    const [code, out, err] = await Promise.all([p.exited, new Response(p.stdout).text(), new Response(p.stderr).text()])
    if (code !== 0) throw new Error(`git ${args.join(' ')}: ${err}`)
    return out.trim()
  }
  await git('clone', '--quiet', repo, into)
  symlinkSync(realpathSync(join(repo, 'node_modules')), join(into, 'node_modules'))
  return { dir: into, commit: await git('-C', into, 'log', '-1', '--format=%h %s') }
}

// ---------------------------------------------------------------------------------------------
// A subscriber speaking the wire protocol (README, WebSocket protocol)

/**
 * One raw WebSocket following CHANNEL: applies snapshots and updates to its own view of the board,
 * keeps the version and epoch of the last frame it applied, and when its socket closes reconnects
 * and resumes with them. Counts what the protocol promises never happens silently: an update that
 * is not the next version (a gap, or a repeat), a player's score going down (an event applied out
 * of its key's order: every player's scores are sent rising).
 */
export class Subscriber {
  view = new Map<string, number>()
  version = -1
  epoch = ''
  updates = 0
  snapshots = 0
  resyncs = 0
  recovered = 0
  reconnects = 0
  gaps = 0
  repeats = 0
  decreases = 0
  /** Resync snapshots older than an update already applied in their epoch (the README says never). */
  staleSnapshots = 0
  /** `subscribed` answers to a resume at another version or epoch than asked for. */
  badResumes = 0
  /** Close codes of the sockets cut under it, with their counts (a refused reconnect is a 1006). */
  closeCodes: Record<number, number> = {}
  errors: string[] = []
  private ws: WebSocket | undefined
  private stopped = false

  constructor(
    readonly name: string,
    private readonly url: () => string,
  ) {}

  async start() {
    this.connect()
    await until(`${this.name}'s snapshot`, () => this.version >= 0, 30_000, 100)
  }

  stop() {
    this.stopped = true
    this.ws?.close()
  }

  private connect() {
    const ws = new WebSocket(this.url())
    this.ws = ws
    ws.onopen = () => {
      const resume = this.version >= 0 ? { since: this.version, epoch: this.epoch } : {}
      ws.send(JSON.stringify({ op: 'subscribe', ref: 's', channel: CHANNEL, ...resume }))
    }
    ws.onmessage = (e) => this.onFrame(JSON.parse(String(e.data)))
    ws.onclose = (e) => {
      if (this.ws !== ws) return
      this.ws = undefined
      if (this.stopped) return
      this.closeCodes[e.code] = (this.closeCodes[e.code] ?? 0) + 1
      this.reconnects++
      setTimeout(() => !this.stopped && this.connect(), 250)
    }
  }

  private onFrame(f: any) {
    if (f.op === 'error') {
      this.errors.push(f.error?.code)
      // A refused subscribe (rate_limited): reconnecting subscribes again.
      if (f.ref === 's') this.ws?.close()
      return
    }
    if (f.channel !== CHANNEL) return
    if (f.op === 'snapshot') {
      this.snapshots++
      if (f.resync) this.resyncs++
      if (f.epoch === this.epoch && f.version < this.version) this.staleSnapshots++
      this.view = new Map(f.data.entries.map((e: { player: string; score: number }) => [e.player, e.score]))
      this.version = f.version
      this.epoch = f.epoch
    } else if (f.op === 'subscribed') {
      this.recovered++
      if (f.version !== this.version || f.epoch !== this.epoch) this.badResumes++
    } else if (f.op === 'update') {
      this.updates++
      const from = f.from ?? f.version
      if (f.epoch !== this.epoch && this.version > 0) this.gaps++
      else if (f.version <= this.version) this.repeats++
      else if (from !== this.version + 1) this.gaps++
      const before = this.view.get(f.data.player)
      if (before !== undefined && f.data.score < before) this.decreases++
      this.view.set(f.data.player, f.data.score)
      this.version = Math.max(this.version, f.version)
      this.epoch = f.epoch
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Ingest: four lanes of batches, resent with the same ids until acknowledged

/** What the clients sent and what was acknowledged: the oracle everything is compared with. */
export type Ledger = {
  sent: number
  acked: number
  /** Events of batches given up after GIVE_UP_MS: stored or not, nobody knows. */
  givenUp: number
  /** Batches answered 202 on their first attempt yet with an event reported duplicate: an id mix-up. */
  freshDuplicates: number
  /** Events of resent batches that JetStream had stored already (de-duplicated). */
  resentDuplicates: number
  /** Each player's last acknowledged score (scores rise, so also its best). */
  latest: Map<string, number>
  /** Answers by status (`202`, `503 unavailable`, `429 rate_limited`, `0 connection`, ...). */
  answers: Record<string, number>
  /** Events acknowledged in each second of the run (how the fault and the recovery look to clients). */
  perSecond: number[]
  /** When the last 202 came (Date.now()), and the longest time between two 202s of any lane: how long ingest stood still. */
  lastAckAt: number
  longestSilence: { ms: number; endedAt: number }
}

export function newLedger(): Ledger {
  return { sent: 0, acked: 0, givenUp: 0, freshDuplicates: 0, resentDuplicates: 0, latest: new Map(), answers: {}, perSecond: [], lastAckAt: Date.now(), longestSilence: { ms: 0, endedAt: 0 } }
}

/** Posts a batch until it is acknowledged (202), waiting as told on 429 and briefly on anything else. */
export async function sendUntilAcked(api: Api, batch: ScoreEvent[], ledger: Ledger): Promise<{ results: { duplicate: boolean }[]; attempts: number } | undefined> {
  const giveUpAt = Date.now() + GIVE_UP_MS
  for (let attempts = 1; ; attempts++) {
    const res = await postEvents(api, batch, 15_000)
    const label = res.status === 202 ? '202' : `${res.status} ${res.body?.error?.code ?? ''}`.trim()
    ledger.answers[label] = (ledger.answers[label] ?? 0) + 1
    if (res.status === 202) return { results: res.body.results, attempts }
    if (Date.now() > giveUpAt) return undefined
    await Bun.sleep(res.status === 429 ? Number(res.body?.error?.details?.retryAfterMs ?? 100) : 250)
  }
}

export async function ingestLane(api: Api, run: string, lane: number, startedAt: number, endAt: number, ledger: Ledger) {
  for (let b = 0; Date.now() < endAt; b++) {
    const batch = Array.from({ length: BATCH }, (_, k) => {
      const i = b * BATCH + k
      return scoreEvent(`${run}-${lane}-${i}`, BOARD, `p${lane}-${i % PLAYERS_PER_LANE}`, i + 1)
    })
    ledger.sent += batch.length
    const answer = await sendUntilAcked(api, batch, ledger)
    if (!answer) {
      ledger.givenUp += batch.length
      continue
    }
    const duplicates = answer.results.filter((r) => r.duplicate).length
    if (answer.attempts === 1 && duplicates > 0) ledger.freshDuplicates++
    ledger.resentDuplicates += answer.attempts > 1 ? duplicates : 0
    ledger.acked += batch.length
    const now = Date.now()
    if (now - ledger.lastAckAt > ledger.longestSilence.ms) ledger.longestSilence = { ms: now - ledger.lastAckAt, endedAt: now - startedAt }
    ledger.lastAckAt = now
    const second = Math.floor((Date.now() - startedAt) / 1000)
    ledger.perSecond[second] = (ledger.perSecond[second] ?? 0) + batch.length
    for (const e of batch) ledger.latest.set(e.data.player, e.data.score)
  }
}

/** The whole board through REST, page after page. */
export async function restBoard(api: Api): Promise<Map<string, number>> {
  const board = new Map<string, number>()
  let after: string | null = null
  do {
    const query: string = `limit=100${after ? `&after=${encodeURIComponent(after)}` : ''}`
    const res = await fetch(`${api.baseUrl}/v1/leaderboards/${BOARD}?${query}`)
    if (res.status !== 200) throw new Error(`GET /v1/leaderboards/${BOARD}: ${res.status} ${await res.text()}`)
    const page = (await res.json()) as { entries: { player: string; score: number }[]; next: string | null }
    for (const e of page.entries) board.set(e.player, e.score)
    after = page.next
  } while (after)
  return board
}

/**
 * Waits for the workers to apply at least every acknowledged event, then for the version to stay
 * put for 3 s (an event applied twice would show up late). Gives up when the version stops moving
 * for STALL_MS short of the acknowledged count (longer than a lease's time-to-live, so a restarted
 * worker's wait for a dead one's partitions is not taken for a loss), or after DRAIN_TIMEOUT_MS.
 */
export async function drain(rm: ReturnType<typeof readModel>, ledger: Ledger): Promise<{ version: number; tookMs: number }> {
  const start = Date.now()
  let version = await rm.version(CHANNEL).catch(() => 0)
  let movedAt = Date.now()
  while (version < configuredVersion(ledger.acked) && Date.now() - movedAt < STALL_MS && Date.now() - start < DRAIN_TIMEOUT_MS) {
    await Bun.sleep(250)
    const v = await rm.version(CHANNEL).catch(() => version)
    if (v !== version) movedAt = Date.now()
    version = v
  }
  for (let steady = 0; steady < 3 && Date.now() - start < DRAIN_TIMEOUT_MS; ) {
    await Bun.sleep(1000)
    const v = await rm.version(CHANNEL)
    steady = v === version ? steady + 1 : 0
    version = v
  }
  return { version, tookMs: Date.now() - start }
}

/** What a soak found: `broken` lists every promise broken (empty: ok). */
export type Verdict = { ok: boolean; broken: string[]; notes: string[]; summary: string[] }

/**
 * Drains (waits for the workers), then compares what was acknowledged (`ledger`) with the read
 * model in `databaseUrl`, the REST board read through `api`, and each subscriber.
 */
export async function judge(api: Api, databaseUrl: string, ledger: Ledger, subs: Subscriber[], ingestMs: number): Promise<Verdict> {
  const broken: string[] = []
  const notes: string[] = []
  const rm = readModel(databaseUrl)
  try {
    const drained = await drain(rm, ledger)
    await until('every subscriber at the read model\'s version', () => subs.every((s) => s.version >= drained.version), 30_000, 100).catch(() => {})
    const [entries, rest, dead] = [await rm.scores(BOARD), await restBoard(api), await rm.deadLetters()]

    // The read model against what was acknowledged.
    // The board was configured before its first score: its version counts that restart too.
    if (drained.version < configuredVersion(ledger.acked)) broken.push(`acknowledged events lost: channel version ${drained.version} < ${configuredVersion(ledger.acked)} (${ledger.acked} acknowledged)`)
    if (drained.version > configuredVersion(ledger.acked + ledger.givenUp)) broken.push(`events applied twice: channel version ${drained.version} > ${configuredVersion(ledger.acked + ledger.givenUp)} (${ledger.acked + ledger.givenUp} events sent)`)
    const entryDiff = diff(entries, ledger.latest)
    if (ledger.givenUp === 0 && entryDiff.length > 0) broken.push(`read model != last acknowledged scores: ${entryDiff.join('; ')}`)
    if (ledger.givenUp > 0) notes.push(`${ledger.givenUp} events given up after ${GIVE_UP_MS / 1000} s of refusals (stored or not: not checked)`)
    if (ledger.freshDuplicates > 0) broken.push(`${ledger.freshDuplicates} batches with fresh event ids answered duplicate`)
    if (dead > 0) broken.push(`${dead} dead letters`)
    const restDiff = diff(rest, entries)
    if (restDiff.length > 0) broken.push(`REST board != read model: ${restDiff.join('; ')}`)

    // Each subscriber against the read model's version and the REST board.
    for (const s of subs) {
      if (s.gaps > 0) broken.push(`${s.name}: ${s.gaps} silent gaps`)
      if (s.repeats > 0) broken.push(`${s.name}: ${s.repeats} repeated versions`)
      if (s.decreases > 0) broken.push(`${s.name}: ${s.decreases} scores went down (applied out of order)`)
      if (s.staleSnapshots > 0) broken.push(`${s.name}: ${s.staleSnapshots} resync snapshots older than what it held`)
      if (s.badResumes > 0) broken.push(`${s.name}: ${s.badResumes} resumes answered at another version or epoch`)
      if (s.version !== drained.version) broken.push(`${s.name}: at version ${s.version}, read model at ${drained.version}`)
      const viewDiff = diff(s.view, rest)
      if (viewDiff.length > 0) broken.push(`${s.name}: view != REST board: ${viewDiff.join('; ')}`)
      if (s.errors.length > 0) notes.push(`${s.name}: error frames ${s.errors.join(', ')}`)
    }
    const unexpected = Object.keys(ledger.answers).filter((a) => !/^(202|429 rate_limited|503 \w+|0 connection|0 timeout)$/.test(a))
    if (unexpected.length > 0) notes.push(`unexpected answers: ${unexpected.map((a) => `${a} x${ledger.answers[a]}`).join(', ')}`)

    const summary = [
      `ingest ${(ingestMs / 1000).toFixed(1)} s: ${ledger.sent} events sent, ${ledger.acked} acknowledged (${Math.round(ledger.acked / (ingestMs / 1000))}/s), ${ledger.givenUp} given up, ${ledger.resentDuplicates} de-duplicated on resend`,
      `acknowledged per second: ${Array.from(ledger.perSecond, (n) => n ?? 0).join(' ')}`,
      `longest time without a 202: ${(ledger.longestSilence.ms / 1000).toFixed(1)} s (ended at ${(ledger.longestSilence.endedAt / 1000).toFixed(1)} s)`,
      `answers: ${Object.entries(ledger.answers).map(([k, v]) => `${k} x${v}`).join(', ')}`,
      `read model: version ${drained.version} (drained in ${(drained.tookMs / 1000).toFixed(1)} s), ${entries.size} entries, dead letters ${dead}; REST board ${rest.size} entries`,
      ...subs.map(
        (s) =>
          `${s.name}: version ${s.version}, ${s.updates} updates, ${s.snapshots} snapshots (${s.resyncs} resync), ${s.recovered} resumed, ${s.reconnects} reconnects (closes ${Object.entries(s.closeCodes).map(([c, n]) => `${c} x${n}`).join(', ') || '-'}), gaps ${s.gaps}, repeats ${s.repeats}, out of order ${s.decreases}`,
      ),
    ]
    return { ok: broken.length === 0, broken, notes, summary }
  } finally {
    await rm.close()
  }
}
