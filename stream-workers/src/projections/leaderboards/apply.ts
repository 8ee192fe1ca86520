import { inArray, sql, type SQL } from 'drizzle-orm'
import { channelOf } from '../../../../core/channels'
import { rowsOf, type Db } from '../../../../core/db/client'
import { lookupByKey, recordset } from '../../../../core/db/recordset'
import { derivedScores, leaderboardEntries, leaderboards } from '../../../../core/db/schema'
import { dedupIdOf, type StoredEvent } from '../../../../core/events'
import type { Applied, Change, Projection, SequencedEvent } from '../types'
import { defaultRules, nextScore, sumRefusal, type BoardRules, type Standing } from './projection'
import { periodKey, resets } from '../../../../core/periods'
import { MATCH_RESULTS_BY } from '../../../../core/matches'
import { projectionAreas } from '../../../../core/projections'
import { putNewest } from '../../../../core/newest'

/**
 * The time a score counts at: JetStream's stored time, or for a match's result (published later
 * from the matches projection's outbox) the stored time of the finish, which it carries as `at`.
 */
const countsAt = ({ event, storedAt }: SequencedEvent<ScoreEvent>): Date => {
  if (event.by !== MATCH_RESULTS_BY) return storedAt
  const at = Date.parse(event.at)
  return Number.isNaN(at) ? storedAt : new Date(at)
}

type ScoreEvent = Extract<StoredEvent, { type: 'score.submitted' }>

/** How many scored boards' rules a database's cache keeps; past it, the least recently read is dropped. */
const SCORED_RULES_KEPT = 10_000

/**
 * Rules of the boards read as scored, by database handle. Once a board has scores its rules can no
 * longer change: the admin API refuses (409 board_has_scores) in the statement that would change
 * them, and nothing sets has_scores back to false (a rebuild keeps the leaderboards table). So a
 * batch need not read them again, and such a board needs no recheck either. By handle, not one map
 * per process: two databases (tests, a rebuild's transaction) may hold the same board name under
 * different rules. Only committed rows fill it (a read that saw has_scores), never a batch's own
 * recheck, which may not commit.
 */
const scoredRulesByDb = new WeakMap<Db, Map<string, BoardRules>>()

const scoredRulesOf = (db: Db): Map<string, BoardRules> => {
  let cache = scoredRulesByDb.get(db)
  if (!cache) scoredRulesByDb.set(db, (cache = new Map()))
  return cache
}

const entryKey = (board: string, period: string, player: string) => `${board}\u0000${period}\u0000${player}`

type EntryKey = { board: string; period: string; player: string }
type BoardRow = typeof leaderboards.$inferSelect
type EntryRow = { board: string; period: string; player: string; score: number; reached_seq: string | number }

/**
 * Applies a batch of `score.*` events: loads the rules of boards not known as scored (see
 * scoredRulesByDb) and the touched standings (two queries, one round trip), evolves them in memory
 * in event order, and returns the one upsert that writes every changed standing (rows bound as one JSON parameter, see recordset) for the batch to
 * run, with the recheck of the rules it used.
 *
 * This async function only awaits; the per-event loops are the plain functions below. JSC compiles
 * an async function whole: with the loops in it, it reached JSC's top tier late in a run (after
 * ~100k events) and that one compile took ~1 s of a compiler thread, in every worker process.
 */
export async function applyScores(db: Db, events: SequencedEvent[]): Promise<Applied> {
  const scores = scoresOf(events)
  if (scores.length === 0) return { changes: [] }
  const known = scoredRulesOf(db)
  // Taken before the reads: other runners of the process add to `known` (and drop from it) meanwhile.
  const { cached, boards, keys, derivedIds } = readsOf(scores, known)
  const [boardRows, rows, appliedRows] = await Promise.all([
    boards.length === 0 ? Promise.resolve([]) : db.select().from(leaderboards).where(inArray(leaderboards.board, boards)),
    rowsOf<EntryRow>(db, sql`${lookupByKey(leaderboardEntries, ['board', 'player', 'period'], keys, ['period'])}`),
    derivedIds.length === 0 ? Promise.resolve([]) : db.select({ id: derivedScores.id }).from(derivedScores).where(inArray(derivedScores.id, derivedIds)),
  ])
  const { rules, scored } = rulesOf(cached, boardRows, known)
  const { changes, written, derivedNew, refused } = evolve(scores, rules, rows, appliedRows)
  if (written.length === 0 && derivedNew.length === 0) return { changes, refused }
  const writeDerived = (when: SQL) =>
    db.insert(derivedScores).select(sql`select id, seq from ${recordset('r', { id: 'text', seq: 'bigint' }, derivedNew)} where ${when}`)
  if (written.length === 0) return { changes, write: writeDerived, refused }
  const writeEntries = (when: SQL) =>
    db
      .insert(leaderboardEntries)
      .select(
        sql`select board, period, player, score, reached_seq, now() from ${recordset('d', { board: 'text', period: 'text', player: 'text', score: 'float8', reached_seq: 'bigint' }, written)} where ${when}`,
      )
      .onConflictDoUpdate({
        target: [leaderboardEntries.board, leaderboardEntries.period, leaderboardEntries.player],
        set: { score: sql`excluded.score`, reachedSeq: sql`excluded.reached_seq`, updatedAt: sql`excluded.updated_at` },
      })
  const write = (when: SQL) => (derivedNew.length > 0 ? [writeEntries(when), writeDerived(when)] : writeEntries(when))
  return { changes, write, refused, recheck: firstScoresRecheck(written.map((w) => w.board), scored, rules) }
}

/** The batch's score events (the batch dead-letters events of other areas before they get here). */
function scoresOf(events: SequencedEvent[]): SequencedEvent<ScoreEvent>[] {
  const scores: SequencedEvent<ScoreEvent>[] = []
  for (const e of events) {
    switch (e.event.type) {
      case 'score.submitted':
        scores.push(e as SequencedEvent<ScoreEvent>)
        break
      default:
        throw new Error(`leaderboards projection got ${e.event.type}`)
    }
  }
  return scores
}

/**
 * What the batch reads: the rules of boards not known as scored (none, once a process has seen
 * them all), the standings it touches and the derived scores (a match's results) it carries.
 */
function readsOf(scores: SequencedEvent<ScoreEvent>[], known: Map<string, BoardRules>) {
  const cached = new Map<string, BoardRules>()
  const boards: string[] = []
  for (const e of scores) {
    const { board } = e.event.data
    if (cached.has(board) || boards.includes(board)) continue
    const r = known.get(board)
    if (r) cached.set(board, r)
    else boards.push(board)
  }
  // A score counts in the period of its event time under its board's reset, which the rules read
  // tells; to keep both reads in one round trip, the standings of a board whose rules are not known
  // yet are read under every reset's period of the event (four small index lookups each) and the
  // right one is picked after.
  const keys = new Map<string, EntryKey>()
  for (const e of scores) {
    const { board, player } = e.event.data
    const knownReset = cached.get(board)?.reset
    for (const reset of knownReset === undefined ? resets : [knownReset]) {
      const period = periodKey(reset, countsAt(e))
      keys.set(entryKey(board, period, player), { board, period, player })
    }
  }
  // Derived scores already applied, by id: a late copy of one is skipped.
  const derivedIds = scores.filter((e) => e.event.by === MATCH_RESULTS_BY).map((e) => dedupIdOf(e.event))
  return { cached, boards, keys: [...keys.values()], derivedIds }
}

/** The rules the batch applies, and the boards read as scored (their rules join `known`). */
function rulesOf(cached: Map<string, BoardRules>, boardRows: BoardRow[], known: Map<string, BoardRules>) {
  const rules = new Map<string, BoardRules>(cached)
  const scored = new Set<string>(cached.keys())
  for (const r of boardRows) {
    const boardRules: BoardRules = { sortOrder: r.sortOrder, operator: r.operator, reset: r.reset }
    rules.set(r.board, boardRules)
    if (!r.hasScores) continue
    scored.add(r.board)
    putNewest(known, r.board, boardRules, SCORED_RULES_KEPT)
  }
  return { rules, scored }
}

/** Evolves the standings read in event order: the changes to notify, the rows to write, the derived scores new to the batch, the refused scores (sumRefusal). */
function evolve(scores: SequencedEvent<ScoreEvent>[], rules: Map<string, BoardRules>, rows: EntryRow[], appliedRows: { id: string }[]) {
  const derivedSeen = new Set(appliedRows.map((r) => r.id))
  const derivedNew: { id: string; seq: number }[] = []
  const standings = new Map<string, Standing>()
  for (const r of rows) standings.set(entryKey(r.board, r.period, r.player), { score: Number(r.score), reachedSeq: Number(r.reached_seq) })
  const changes: Change[] = []
  const refused: { seq: number; reason: string }[] = []
  const dirty = new Map<string, EntryKey & Standing>()
  for (const e of scores) {
    const { event, seq } = e
    const derivedId = event.by === MATCH_RESULTS_BY ? dedupIdOf(event) : undefined
    if (derivedId !== undefined && derivedSeen.has(derivedId)) continue
    const { board, player, score } = event.data
    const boardRules = rules.get(board) ?? defaultRules
    // JetStream's stored time: never a worker's clock, so a rebuild puts it in the same period.
    const period = periodKey(boardRules.reset, countsAt(e))
    const key = entryKey(board, period, player)
    const current = standings.get(key)
    const refusal = sumRefusal(current, score, boardRules, board, player)
    if (refusal !== undefined) {
      // A dead letter, not applied: a match result is not recorded as counted either, so a replay
      // of the letter (once the total leaves room) applies it as it would a client's score.
      refused.push({ seq, reason: refusal })
      continue
    }
    if (derivedId !== undefined) {
      derivedSeen.add(derivedId)
      derivedNew.push({ id: derivedId, seq })
    }
    const next = nextScore(current, { score, seq }, boardRules)
    if (!next) continue
    standings.set(key, next)
    dirty.set(key, { board, period, player, ...next })
    changes.push({
      channel: channelOf.leaderboard(board),
      data: { player, score: next.score, previous: current?.score ?? null, ...(period !== '' ? { period } : {}), reachedSeq: next.reachedSeq },
    })
  }
  const written = [...dirty.values()].map((d) => ({ board: d.board, period: d.period, player: d.player, score: d.score, reached_seq: d.reachedSeq }))
  return { changes, written, derivedNew, refused }
}

/**
 * The rules were read without a lock, and the admin API may change a board's rules until the board
 * has scores. For the boards this batch scores first, the recheck locks the rules row (creating it
 * for a board without one), marks it scored, and counts it only if its rules still are those the
 * batch used: an admin change that committed first fails the recheck (the batch is applied again
 * under the new rules); one that comes after finds the board scored (409 board_has_scores). Boards
 * read as scored need nothing: their rules can no longer change. Sorted: one lock order for all.
 */
function firstScoresRecheck(boards: string[], scored: Set<string>, rules: Map<string, BoardRules>): Applied['recheck'] {
  const first = [...new Set(boards)].filter((board) => !scored.has(board)).sort()
  if (first.length === 0) return undefined
  const used = first.map((board) => {
    const r = rules.get(board) ?? defaultRules
    return { board, sort_order: r.sortOrder, operator: r.operator, reset: r.reset }
  })
  return {
    rows: used.length,
    statement: sql`insert into ${leaderboards} (board, sort_order, operator, reset, has_scores, configured)
      select board, sort_order, operator, reset, true, false from ${recordset('r', { board: 'text', sort_order: 'text', operator: 'text', reset: 'text' }, used)}
      on conflict (board) do update set has_scores = true
      where ${leaderboards}.sort_order = excluded.sort_order and ${leaderboards}.operator = excluded.operator and ${leaderboards}.reset = excluded.reset
      returning 1`,
  }
}

/** The leaderboards read model: `score.*` events into leaderboard_entries. */
export const leaderboardsProjection: Projection = { name: 'leaderboards', area: projectionAreas.leaderboards, apply: applyScores }
