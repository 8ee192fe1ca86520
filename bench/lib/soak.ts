/**
 * What the outside soaks share (bench/fault-soak.ts, bench/cluster-soak.ts, bench/edge-soak.ts): a
 * fresh clone to run Fanfare from; for the cluster and edge soaks, the fault soak's raw WebSocket
 * subscriber (bench/soak/subscriber.ts) following one board and resuming with its version,
 * lanes of REST clients that resend refused batches with the same ids, and the verdict that
 * compares what was acknowledged with the read model, the REST board and every subscriber.
 */
import { realpathSync, symlinkSync } from 'node:fs'
import { join } from 'node:path'
import postgres from 'postgres'
import { TEST_PG_URL } from '../../core/testing/env'
import { BOARD, BoardView, restBoard } from '../soak/leaderboard'
import { Subscriber, untilAt } from '../soak/subscriber'
import { GIVE_UP_MS, sendUntilAcked, Tally } from '../soak/send'
import { configuredVersion, diff, readModel, scoreEvent, type Api } from '../../test/cluster/support'

export { BOARD }
export const CHANNEL = `leaderboard:${BOARD}`
export const LANES = 4
export const BATCH = 100
/** Players per lane: 4 x 25 = 100, the most a leaderboard snapshot holds, so a view is the whole board. */
export const PLAYERS_PER_LANE = 25
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

/**
 * The line a soak prints naming the Fanfare variables of its own environment that reach the
 * processes it starts (test/e2e/harness.ts spawnProc starts them with this environment under the
 * soak's own variables): say a key's rate limit lifted. Secrets are
 * not printed. Undefined when there are none.
 */
export function passedEnvironmentLine(env: Record<string, string | undefined> = process.env): string | undefined {
  const passed = Object.keys(env).filter((k) => (k.startsWith('FANFARE_') || k === 'LOG_LEVEL') && !/TOKEN|SECRET/.test(k))
  return passed.length > 0 ? `from the environment: ${passed.map((k) => `${k}=${env[k]}`).join(' ')}` : undefined
}

/**
 * What to undo when a soak is interrupted (Ctrl-C, SIGTERM): its processes and servers must not
 * outlive it. Each run adds its teardown and deletes it when it ran; `after` runs last (the soak's
 * scratch directory, say), then the process exits 130.
 */
export function interruptTeardowns(after?: () => void): Set<() => Promise<void>> {
  const teardowns = new Set<() => Promise<void>>()
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, async () => {
      await Promise.all([...teardowns].map((t) => t().catch(() => {})))
      after?.()
      process.exit(130)
    })
  }
  return teardowns
}

export type ScratchDatabase = { url: string; drop: () => Promise<void> }

/** A fresh database `name` on the Postgres at `serverUrl` (the machine's by default); `drop` removes it, whoever is still connected. */
export async function scratchDatabase(name: string, serverUrl = TEST_PG_URL): Promise<ScratchDatabase> {
  const run = async (statement: string) => {
    const admin = postgres(serverUrl, { max: 1, onnotice: () => {} })
    try {
      await admin.unsafe(statement)
    } finally {
      await admin.end()
    }
  }
  await run(`CREATE DATABASE ${name}`)
  return { url: Object.assign(new URL(serverUrl), { pathname: `/${name}` }).toString(), drop: () => run(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`) }
}

// ---------------------------------------------------------------------------------------------
// A subscriber speaking the wire protocol: the fault soak's (bench/soak/subscriber.ts), on the board

export type BoardSubscriber = Subscriber<BoardView>

/** One raw WebSocket following CHANNEL with its own view of the board (see bench/soak/subscriber.ts). */
export const boardSubscriber = (name: string, url: () => string): BoardSubscriber => new Subscriber(name, CHANNEL, new BoardView(), url)

// ---------------------------------------------------------------------------------------------
// Ingest: four lanes of batches, resent with the same ids until acknowledged

/**
 * What the clients sent and what was acknowledged (bench/soak/send.ts's Tally: answers, per second,
 * the longest time without a 202), and each player's last acknowledged score (scores rise, so also
 * its best): the oracle everything is compared with.
 */
export class Ledger extends Tally {
  latest = new Map<string, number>()
}

export const newLedger = () => new Ledger()

export async function ingestLane(api: Api, run: string, lane: number, startedAt: number, endAt: number, ledger: Ledger) {
  for (let b = 0; Date.now() < endAt; b++) {
    const batch = Array.from({ length: BATCH }, (_, k) => {
      const i = b * BATCH + k
      return scoreEvent(`${run}-${lane}-${i}`, BOARD, `p${lane}-${i % PLAYERS_PER_LANE}`, i + 1)
    })
    if (!(await sendUntilAcked(api.baseUrl, api.ingestToken, batch, ledger, startedAt))) continue
    for (const e of batch) ledger.latest.set(e.data.player, e.data.score)
  }
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

/** `whenShort`: called when the drain gives up short of the acknowledged count, with the version it stood at and a reader of the current one; its lines become notes. */
export type JudgeOptions = { whenShort?: (version: number, readVersion: () => Promise<number>) => Promise<string[]> }

/** What a soak found: `broken` lists every promise broken (empty: ok). */
export type Verdict = { ok: boolean; broken: string[]; notes: string[]; summary: string[] }

/**
 * Drains (waits for the workers), then compares what was acknowledged (`ledger`) with the read
 * model in `databaseUrl`, the REST board read through `api`, and each subscriber.
 */
export async function judge(api: Api, databaseUrl: string, ledger: Ledger, subs: BoardSubscriber[], ingestMs: number, opts: JudgeOptions = {}): Promise<Verdict> {
  const broken: string[] = []
  const notes: string[] = []
  const rm = readModel(databaseUrl)
  try {
    let drained = await drain(rm, ledger)
    if (drained.version < configuredVersion(ledger.acked) && opts.whenShort) {
      // Stalled short: say where the events are (the soak's own diagnosis), then wait once more, so
      // that a slow catch-up (events still stored, applied late) is told apart from a loss.
      const stalledAt = drained.version
      notes.push(...(await opts.whenShort(stalledAt, () => rm.version(CHANNEL))))
      drained = await drain(rm, ledger)
      broken.push(`the read model stood still ${STALL_MS / 1000} s at version ${stalledAt}, short of ${configuredVersion(ledger.acked)}; after the diagnosis it reached ${drained.version}`)
    }
    await untilAt(subs, drained.version)
    const [entries, rest, dead] = [await rm.scores(BOARD), await restBoard(api.baseUrl), await rm.deadLetters()]

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
      const found = s.findings(drained.version)
      broken.push(...found.broken)
      notes.push(...found.notes)
      const viewDiff = diff(s.view.board, rest)
      if (viewDiff.length > 0) broken.push(`${s.name}: view != REST board: ${viewDiff.join('; ')}`)
    }
    const unexpected = ledger.unexpected()
    if (unexpected.length > 0) notes.push(`unexpected answers: ${unexpected.join(', ')}`)

    const summary = [
      `ingest ${(ingestMs / 1000).toFixed(1)} s: ${ledger.sent} events sent, ${ledger.acked} acknowledged (${Math.round(ledger.acked / (ingestMs / 1000))}/s), ${ledger.givenUp} given up, ${ledger.resentDuplicates} de-duplicated on resend`,
      `acknowledged per second: ${Array.from(ledger.perSecond, (n) => n ?? 0).join(' ')}`,
      `longest time without a 202: ${(ledger.longestSilence.ms / 1000).toFixed(1)} s (ended at ${(ledger.longestSilence.endedAt / 1000).toFixed(1)} s)`,
      `answers: ${Object.entries(ledger.answers).map(([k, v]) => `${k} x${v}`).join(', ')}`,
      `read model: version ${drained.version} (drained in ${(drained.tookMs / 1000).toFixed(1)} s), ${entries.size} entries, dead letters ${dead}; REST board ${rest.size} entries`,
      ...subs.map((s) => s.line()),
    ]
    return { ok: broken.length === 0, broken, notes, summary }
  } finally {
    await rm.close()
  }
}
