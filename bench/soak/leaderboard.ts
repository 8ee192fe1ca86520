import { configureBoard, configuredVersion, diff, scoreEvent } from '../../test/cluster/support'
import { channelVersion, type SoakArea, type SoakContext, type Verdict } from './area'
import { sendUntilAcked, Tally, tallyFindings } from './send'
import { untilAt, type ChannelView, type Subscriber } from './subscriber'

export const BOARD = 'soak'
const CHANNEL = `leaderboard:${BOARD}`
const LANES = 4
const BATCH = 100
/** Players per lane: 4 x 25 = 100, the most a leaderboard snapshot holds, so a view is the whole board. */
const PLAYERS_PER_LANE = 25
const DRAIN_TIMEOUT_MS = 90_000
/** The read model's version standing still this long short of the acknowledged count ends the drain. */
const STALL_MS = 20_000

/** A subscriber's board; a player's score going down is an event applied out of its key's order (scores are sent rising). */
export class BoardView implements ChannelView {
  board = new Map<string, number>()
  snapshot(data: any) {
    this.board = new Map(data.entries.map((e: { player: string; score: number }) => [e.player, e.score]))
  }
  update(data: any) {
    const before = this.board.get(data.player)
    this.board.set(data.player, data.score)
    return before !== undefined && data.score < before ? `${data.player}: ${data.score} after ${before}` : undefined
  }
}

/**
 * Scores on a `latest` board (`leaderboard:soak`): four lanes of 100-event batches, each player's
 * scores rising so every event is a change (the channel's version counts them) and a score going
 * down is an event applied out of order. Oracle: each player's last acknowledged score.
 */
export class LeaderboardArea implements SoakArea {
  readonly name = 'leaderboard'
  readonly tally = new Tally()
  readonly channels = [{ channel: CHANNEL, subscribers: 3, view: () => new BoardView() }]
  private latest = new Map<string, number>()

  async prepare(ctx: SoakContext) {
    await configureBoard(ctx.api, BOARD, 'latest')
  }

  async ingest(ctx: SoakContext, endAt: number) {
    await Promise.all(Array.from({ length: LANES }, (_, lane) => this.lane(ctx, lane, endAt)))
  }

  private async lane(ctx: SoakContext, lane: number, endAt: number) {
    for (let b = 0; Date.now() < endAt; b++) {
      const batch = Array.from({ length: BATCH }, (_, k) => {
        const i = b * BATCH + k
        return scoreEvent(`${ctx.run}-${lane}-${i}`, BOARD, `p${lane}-${i % PLAYERS_PER_LANE}`, i + 1)
      })
      if (!(await sendUntilAcked(ctx.api.baseUrl, ctx.api.ingestToken, batch, this.tally, ctx.startedAt))) continue
      for (const e of batch) this.latest.set(e.data.player, e.data.score)
    }
  }

  /**
   * Waits for the workers to apply at least every acknowledged event, then for the version to stay
   * put for 3 s (an event applied twice would show up late). Gives up when the version stops moving
   * for STALL_MS short of the acknowledged count (longer than a lease's time-to-live, so a restarted
   * worker's wait for a dead one's partitions is not taken for a loss), or after DRAIN_TIMEOUT_MS.
   */
  private async drain(ctx: SoakContext): Promise<{ version: number; tookMs: number }> {
    const start = Date.now()
    let version = await channelVersion(ctx.sql, CHANNEL).catch(() => 0)
    let movedAt = Date.now()
    while (version < configuredVersion(this.tally.acked) && Date.now() - movedAt < STALL_MS && Date.now() - start < DRAIN_TIMEOUT_MS) {
      await Bun.sleep(250)
      const v = await channelVersion(ctx.sql, CHANNEL).catch(() => version)
      if (v !== version) movedAt = Date.now()
      version = v
    }
    for (let steady = 0; steady < 3 && Date.now() - start < DRAIN_TIMEOUT_MS; ) {
      await Bun.sleep(1000)
      const v = await channelVersion(ctx.sql, CHANNEL)
      steady = v === version ? steady + 1 : 0
      version = v
    }
    return { version, tookMs: Date.now() - start }
  }

  async check(ctx: SoakContext, subs: Subscriber[]): Promise<Verdict> {
    const { broken, notes } = tallyFindings(this.name, this.tally)
    const t = this.tally
    const drained = await this.drain(ctx)
    await untilAt(subs, drained.version)
    const rows = await ctx.sql`SELECT player, score FROM leaderboard_entries WHERE board = ${BOARD}`
    const entries = new Map(rows.map((r) => [r.player as string, Number(r.score)]))
    const rest = await restBoard(ctx.api.baseUrl)

    // The board was configured before its first score: its version counts that restart too.
    if (drained.version < configuredVersion(t.acked)) broken.push(`leaderboard: acknowledged events lost: channel version ${drained.version} < ${configuredVersion(t.acked)} (${t.acked} acknowledged)`)
    if (drained.version > configuredVersion(t.acked + t.givenUp)) broken.push(`leaderboard: events applied twice: channel version ${drained.version} > ${configuredVersion(t.acked + t.givenUp)} (${t.acked + t.givenUp} events sent)`)
    const entryDiff = diff(entries, this.latest)
    if (t.givenUp === 0 && entryDiff.length > 0) broken.push(`leaderboard: read model != last acknowledged scores: ${entryDiff.join('; ')}`)
    const restDiff = diff(rest, entries)
    if (restDiff.length > 0) broken.push(`leaderboard: REST board != read model: ${restDiff.join('; ')}`)
    for (const s of subs) {
      const f = s.findings(drained.version)
      broken.push(...f.broken)
      notes.push(...f.notes)
      const viewDiff = diff((s.view as BoardView).board, rest)
      if (viewDiff.length > 0) broken.push(`${s.name}: view != REST board: ${viewDiff.join('; ')}`)
    }
    const ingestSeconds = t.perSecond.length || 1
    return {
      broken,
      notes,
      summary: [
        `leaderboard: ${t.line()}`,
        `leaderboard: acknowledged per second: ${Array.from(t.perSecond, (n) => n ?? 0).join(' ')} (~${Math.round(t.acked / ingestSeconds)}/s)`,
        `leaderboard: read model version ${drained.version} (drained in ${(drained.tookMs / 1000).toFixed(1)} s), ${entries.size} entries; REST board ${rest.size} entries`,
        ...subs.map((s) => s.line()),
      ],
    }
  }
}

/** The whole board through REST, page after page. */
export async function restBoard(baseUrl: string): Promise<Map<string, number>> {
  const board = new Map<string, number>()
  let after: string | null = null
  do {
    const query: string = `limit=100${after ? `&after=${encodeURIComponent(after)}` : ''}`
    const res = await fetch(`${baseUrl}/v1/leaderboards/${BOARD}?${query}`)
    if (res.status !== 200) throw new Error(`GET /v1/leaderboards/${BOARD}: ${res.status} ${await res.text()}`)
    const page = (await res.json()) as { entries: { player: string; score: number }[]; next: string | null }
    for (const e of page.entries) board.set(e.player, e.score)
    after = page.next
  } while (after)
  return board
}
