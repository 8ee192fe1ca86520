import { and, asc, count, desc, eq, gt, gte, lt, or, sql, type SQL } from 'drizzle-orm'
import { channelOf } from '../../../../core/channels'
import type { Db } from '../../../../core/db/client'
import { readChannelSnapshot, type ChannelSnapshot } from '../channel-snapshot'
import { leaderboardEntries, leaderboards, type ScoreOperator, type SortOrder } from '../../../../core/db/schema'
import { Invalid } from '../../errors'
import { isPeriodKey, periodBounds, periodKey, previousKey, type Reset } from '../../../../core/periods'
import { decodeCursor, encodeCursor } from './cursor'
import type { BoardSnapshot, Entry, PlayerStanding, RankedPage } from './model'

/** A board's rules; a board without a config row is desc/best without periods. */
export type BoardConfig = { board: string; order: SortOrder; operator: ScoreOperator; reset: Reset; configured: boolean }

const e = leaderboardEntries

/** Reads a board's rules: the defaults when no admin stored any (see `leaderboards.configured`). */
export async function boardConfig(db: Db, board: string): Promise<BoardConfig> {
  const [row] = await db.select().from(leaderboards).where(eq(leaderboards.board, board))
  return row
    ? { board, order: row.sortOrder, operator: row.operator, reset: row.reset, configured: row.configured }
    : { board, order: 'desc', operator: 'best', reset: 'none', configured: false }
}

/**
 * The period a read asks for: `current` (the default) or `previous` (by the server's clock now), or a
 * period key of the board's reset. A board without periods has one, `current` (''); anything else
 * is 422 naming `period`.
 */
export function resolvePeriod(cfg: Pick<BoardConfig, 'board' | 'reset'>, asked: string | undefined, now = Date.now()): string {
  const refuse = (message: string) => new Invalid('invalid_request', message, [{ path: '/period', message, in: 'query' }])
  if (asked === undefined || asked === 'current') return periodKey(cfg.reset, now)
  if (cfg.reset === 'none') throw refuse(`board ${cfg.board} has no periods (reset: none): period can only be current`)
  if (asked === 'previous') return previousKey(cfg.reset, now)
  if (!isPeriodKey(cfg.reset, asked)) {
    throw refuse(`period must be current, previous or a ${cfg.reset} period key (${cfg.reset === 'daily' ? 'YYYY-MM-DD' : cfg.reset === 'weekly' ? 'YYYY-Www' : 'YYYY-MM'}), got ${JSON.stringify(asked)}`)
  }
  return asked
}

/** The period as answers name it: null on a board without periods. */
const named = (period: string) => (period === '' ? null : period)

/**
 * The player id as the rank indexes hold it (`player || ''`, see the schema): the same order as
 * player, and an ORDER BY on it is an index scan of the board's order that stops at the limit.
 */
const tieBreak = sql`${e.player} || ''`

/** Ranking order: score (per board), then who reached it first (reachedSeq), then player id. */
function ranking(order: SortOrder) {
  return [order === 'asc' ? asc(e.score) : desc(e.score), asc(e.reachedSeq), asc(tieBreak)]
}
/** The reverse of `ranking`, to walk upwards from a player. */
function reverseRanking(order: SortOrder) {
  return [order === 'asc' ? desc(e.score) : asc(e.score), desc(e.reachedSeq), desc(tieBreak)]
}

/** Rows ranked strictly before or after (score, reachedSeq, player) under `order`. */
function rankedOn(side: 'before' | 'after', order: SortOrder, s: { score: number; reachedSeq: number; player: string }): SQL {
  const [less, more] = side === 'before' ? [lt, gt] : [gt, lt]
  return or(
    order === 'asc' ? less(e.score, s.score) : more(e.score, s.score),
    and(eq(e.score, s.score), less(e.reachedSeq, s.reachedSeq)),
    and(eq(e.score, s.score), eq(e.reachedSeq, s.reachedSeq), less(e.player, s.player)),
  )!
}

/**
 * One page of a board, from `offset` (at most MAX_OFFSET, see the model) or `after` a cursor (any
 * depth: index ranges that start at the cursor, not a walk over the skipped rows). An unknown board is an empty page.
 * Ranks are 1-based positions; on a cursor page they continue from the cursor's rank, so they are
 * exact when nothing moved above since the previous page. `next` is null on the page that ends
 * the board.
 */
export async function leaderboardPage(db: Db, board: string, page: { limit: number; offset?: number; after?: string; period?: string }, now = Date.now()): Promise<RankedPage> {
  const { entries, ...rest } = await rankedRows(db, board, page, now)
  return { ...rest, entries: entries.map(({ reachedSeq: _, ...entry }) => entry) }
}

/** leaderboardPage with each entry's reachedSeq (the tie order), which snapshots carry. */
async function rankedRows(db: Db, board: string, page: { limit: number; offset?: number; after?: string; period?: string }, now: number) {
  if (page.offset !== undefined && page.after !== undefined) {
    const message = 'offset and after cannot be combined: after already says where the page starts'
    throw new Invalid('invalid_request', message, [{ path: '/after', message, in: 'query' }])
  }
  const cfg = await boardConfig(db, board)
  const from = page.after === undefined ? undefined : decodeCursor(page.after, cfg)
  // A cursor names its period: it continues that one, whatever the clock says now.
  const period = from ? from.period : resolvePeriod(cfg, page.period, now)
  if (from && page.period !== undefined && resolvePeriod(cfg, page.period, now) !== from.period) {
    const message = 'after continues the period of the page it came from: leave period out, or give that one'
    throw new Invalid('invalid_request', message, [{ path: '/after', message, in: 'query' }])
  }
  const inBoard = and(eq(e.board, board), eq(e.period, period))!
  // One row more than asked says whether a following page exists.
  const want = page.limit + 1
  const select = () => db.select({ player: e.player, score: e.score, reachedSeq: e.reachedSeq }).from(e)
  let rows: { player: string; score: number; reachedSeq: number }[]
  if (!from) {
    rows = await select()
      .where(inBoard)
      .orderBy(...ranking(cfg.order))
      .limit(want)
      .offset(page.offset ?? 0)
  } else {
    // Two index ranges instead of one OR: first the rest of the cursor's own score (players tied
    // on a score can be most of a board, and the index orders them by reachedSeq whatever the
    // board's order), then the scores beyond it.
    rows = await select()
      .where(
        and(
          inBoard,
          eq(e.score, from.score),
          gte(e.reachedSeq, from.reachedSeq),
          or(gt(e.reachedSeq, from.reachedSeq), gt(e.player, from.player)),
        ),
      )
      .orderBy(asc(e.reachedSeq), asc(tieBreak))
      .limit(want)
    if (rows.length < want) {
      const beyond = await select()
        .where(and(inBoard, cfg.order === 'asc' ? gt(e.score, from.score) : lt(e.score, from.score)))
        .orderBy(...ranking(cfg.order))
        .limit(want - rows.length)
      rows = rows.concat(beyond)
    }
  }
  const first = from ? from.rank + 1 : (page.offset ?? 0) + 1
  const shown = rows.slice(0, page.limit)
  const last = shown.at(-1)
  return {
    board,
    order: cfg.order,
    operator: cfg.operator,
    reset: cfg.reset,
    period: named(period),
    entries: shown.map((r, i) => ({ rank: first + i, player: r.player, score: r.score, reachedSeq: Number(r.reachedSeq) })),
    next: rows.length > page.limit && last ? encodeCursor({ board, period, ...last, rank: first + shown.length - 1 }) : null,
  }
}

/**
 * A player's rank and neighbours, or undefined when the player has no score on the board. The
 * rank is one plus a count of better entries (index-backed), not a scan of the board.
 */
export async function playerStanding(db: Db, board: string, player: string, opts: { neighbours: number; period?: string }, now = Date.now()): Promise<PlayerStanding | undefined> {
  const { neighbours } = opts
  const cfg = await boardConfig(db, board)
  const period = resolvePeriod(cfg, opts.period, now)
  const inBoard = and(eq(e.board, board), eq(e.period, period))!
  const [me] = await db
    .select({ player: e.player, score: e.score, reachedSeq: e.reachedSeq })
    .from(e)
    .where(and(inBoard, eq(e.player, player)))
  if (!me) return undefined
  const [{ n }] = await db.select({ n: count() }).from(e).where(and(inBoard, rankedOn('before', cfg.order, me)))
  const rank = Number(n) + 1
  let above: Entry[] = []
  let below: Entry[] = []
  if (neighbours > 0) {
    const up = await db
      .select({ player: e.player, score: e.score })
      .from(e)
      .where(and(inBoard, rankedOn('before', cfg.order, me)))
      .orderBy(...reverseRanking(cfg.order))
      .limit(neighbours)
    above = up.map((r, i) => ({ rank: rank - i - 1, player: r.player, score: r.score })).reverse()
    const down = await db
      .select({ player: e.player, score: e.score })
      .from(e)
      .where(and(inBoard, rankedOn('after', cfg.order, me)))
      .orderBy(...ranking(cfg.order))
      .limit(neighbours)
    below = down.map((r, i) => ({ rank: rank + i + 1, player: r.player, score: r.score }))
  }
  return { board, player, period: named(period), rank, score: me.score, above, below }
}

/** Entries in a leaderboard snapshot. */
export const SNAPSHOT_SIZE = 100

/**
 * Entries a leaderboard snapshot carries below the shown ones (its `reserve`): a client fills the
 * top from them when shown players drop, and asks for a snapshot again only once it has none left
 * to tell who moves up. bench/board-resync-probe.ts measures what it saves.
 */
export const RESERVE_SIZE = 100

/**
 * The first page of the channel `leaderboard:<board>` with its version and epoch (see
 * readChannelSnapshot), and the `reserve` of the next RESERVE_SIZE entries, read in the same query.
 */
export async function leaderboardSnapshot(db: Db, board: string, now = Date.now()): Promise<ChannelSnapshot<BoardSnapshot> & { until?: number; from?: number }> {
  let period: { start: number; end: number } | undefined
  const snap = await readChannelSnapshot(db, channelOf.leaderboard(board), async (q) => {
    // A cursor would go stale as updates apply to the snapshot: subscribers get none.
    const { next, entries, ...page } = await rankedRows(q, board, { limit: SNAPSHOT_SIZE + RESERVE_SIZE }, now)
    // The current period's snapshot is good until the period ends: then the hub re-syncs its
    // subscribers with the next period's (explicitly, a snapshot marked resync).
    // Its start tells the hub which resume points may hold an earlier period.
    if (page.reset !== 'none') period = periodBounds(page.reset, now)
    const reserve = entries.slice(SNAPSHOT_SIZE).map(({ rank: _, ...e }) => e)
    return { ...page, entries: entries.slice(0, SNAPSHOT_SIZE), limit: SNAPSHOT_SIZE, more: entries.length > SNAPSHOT_SIZE, reserve: { size: RESERVE_SIZE, entries: reserve, more: next !== null } }
  })
  return period === undefined ? snap : { ...snap, until: period.end, from: period.start }
}
