/**
 * Matches: the pure state machine that the matches projection runs and that clients may run too
 * (it imports nothing but types). Every decision depends only on one match's events in stream
 * order and their times (JetStream's stored time, never a worker's clock), so a rebuild decides
 * every join, leave and grace expiry the same way.
 *
 * ```
 *  match.created
 *        |
 *        v     the last seat is taken
 *      open ------------------------> full
 *        |  <------------------------   |
 *        |       a player leaves        |
 *        +-------------+   +------------+
 *                start |   | start
 *                      v   v
 *                     started ---finish---> finished
 *
 *  open | full | started ---abort---> aborted
 * ```
 */

import type { MatchChange, MatchJoinRejection, MatchStanding, MatchStatus, MatchView, UserChange } from './channels'
import type { matches } from './db/schema'

export type { MatchChange, MatchJoinRejection, MatchStanding, MatchStatus, MatchView, UserChange } from './channels'

/** One seat. Times are epoch milliseconds. */
export type Seat = {
  player: string
  ready: boolean
  /** False from the join until the player's first connection to `match:<id>`, and while disconnected. */
  connected: boolean
  /** When the player's last connection was seen to close (event time); null while connected and before the first connection. */
  disconnectedAt: number | null
  /** The seat is given up at this event time unless the player comes back first. */
  graceUntil: number | null
}

/** A match as the projection keeps it. Times are epoch milliseconds (event times). */
export type MatchState = {
  match: string
  mode: string
  maxPlayers: number
  properties: Record<string, string | number | boolean>
  status: MatchStatus
  /** In the order they were seated. */
  players: Seat[]
  /**
   * The players seated when the match started, in seat order (null before the start). Nobody joins
   * a started match, so these are everyone who played it: a player who left or lost their seat
   * later is still in it, and their result still counts.
   */
  lineup: string[] | null
  /** Final standings, once finished: results of the lineup only. */
  results: MatchStanding[] | null
  /** Players the finish named who were not in the lineup, in the finish's order: not scored. */
  ignored: string[] | null
  createdAt: number
  startedAt: number | null
  endedAt: number | null
  /** Stream sequence of `match.created` (the listing's order). */
  createdSeq: number
}

/**
 * One event of a match as the state machine sees it: `player` is decided by the caller from the
 * event's principal (a user's `sub`; for API nodes' events, the player they name). `at` is the
 * event time in epoch milliseconds.
 */
export type MatchEvent =
  | { type: 'match.created'; match: string; mode: string; maxPlayers: number; properties?: Record<string, string | number | boolean>; at: number; seq: number }
  /**
   * `graceMs`: the join grace the API node stamped (FANFARE_MATCH_JOIN_GRACE_MS): the seat starts
   * not yet connected and is given up at `at + graceMs` unless the player's first connection comes
   * first. Absent in joins stored before the join grace existed: those seats start connected, as
   * they did then, so a rebuild decides alike.
   */
  | { type: 'match.join'; match: string; player: string; graceMs?: number; at: number }
  /** `revoked`: the API nodes saw the player's credential revoked (their sockets closed for it): the seat goes at once, no grace. */
  | { type: 'match.leave'; match: string; player: string; reason: 'left' | 'disconnected' | 'revoked'; at: number }
  | { type: 'match.ready'; match: string; player: string; at: number }
  | { type: 'match.start'; match: string; at: number }
  | { type: 'match.finish'; match: string; results: { player: string; score: number }[]; at: number }
  | { type: 'match.abort'; match: string; at: number }
  | { type: 'match.player.connection'; match: string; player: string; connected: boolean; graceMs: number; at: number }

/** A change for one channel: `match:<id>`, or a player's `user:<sub>`. */
export type MatchOutput = { channel: 'match'; data: MatchChange } | { channel: 'user'; user: string; data: UserChange }

/**
 * What one event did: the match after it (undefined: no match), what to tell channels, the results
 * to score (once, on the finish), or `refused` with why for a game server's event that can never
 * apply (dead-lettered).
 */
export type Evolved = {
  state: MatchState | undefined
  outputs: MatchOutput[]
  /** Set on the one event that finished the match: the standings of its lineup (what is scored). */
  finished?: MatchStanding[]
  refused?: string
}

/**
 * The principal (`by`) of the scores the matches projection derives from a finished match. No
 * client can publish as it (principal ids are `u:<sub>`, `k:<key id>` or a root's name), so the
 * leaderboards projection may trust the time it carries: such a score counts in the period of its
 * `at`, the finish event's stored time, not its own (later) one.
 */
export const MATCH_RESULTS_BY = 'matches'

/** The event id of the i-th result of a match's finish: deterministic, so a resend is de-duplicated. */
export const resultEventId = (match: string, i: number) => `result.${match}.${i}`

/** The default FANFARE_MATCH_GRACE_MS. */
export const DEFAULT_MATCH_GRACE_MS = 30_000

const live = (s: MatchStatus) => s === 'open' || s === 'full' || s === 'started'
const iso = (ms: number) => new Date(ms).toISOString()

/** A match's read-model row (the `matches` table) as the state machine holds it. */
export const matchStateOfRow = (r: typeof matches.$inferSelect): MatchState => ({
  match: r.match,
  mode: r.mode,
  maxPlayers: r.maxPlayers,
  properties: r.properties,
  status: r.status,
  players: r.players,
  lineup: r.lineup,
  results: r.results,
  ignored: r.ignored,
  createdAt: r.createdAt.getTime(),
  startedAt: r.startedAt?.getTime() ?? null,
  endedAt: r.endedAt?.getTime() ?? null,
  createdSeq: Number(r.createdSeq),
})

/** What clients see of a match (REST, channel snapshot). */
export function matchView(s: MatchState): MatchView {
  return {
    match: s.match,
    mode: s.mode,
    status: s.status,
    maxPlayers: s.maxPlayers,
    ...(Object.keys(s.properties).length > 0 ? { properties: s.properties } : {}),
    players: s.players.map((p) => ({ player: p.player, ready: p.ready, connected: p.connected, ...(p.graceUntil !== null ? { graceUntil: iso(p.graceUntil) } : {}) })),
    ...(s.results ? { results: s.results } : {}),
    ...(s.ignored && s.ignored.length > 0 ? { ignored: s.ignored } : {}),
    createdAt: iso(s.createdAt),
    ...(s.startedAt !== null ? { startedAt: iso(s.startedAt) } : {}),
    ...(s.endedAt !== null ? { endedAt: iso(s.endedAt) } : {}),
  }
}

/**
 * Final standings: highest score first; equal scores share a rank (1, 1, 3), and keep the order
 * the game server reported them in.
 */
export function standingsOf(results: { player: string; score: number }[]): MatchStanding[] {
  const sorted = results.map((r, i) => ({ ...r, i })).sort((a, b) => b.score - a.score || a.i - b.i)
  let rank = 0
  return sorted.map((r, n) => {
    if (n === 0 || r.score !== sorted[n - 1].score) rank = n + 1
    return { player: r.player, score: r.score, rank }
  })
}

/** Earliest grace end among the seats (null when every seated player is connected): what the grace sweeper indexes. */
export const nextGraceEnd = (s: MatchState): number | null =>
  live(s.status) ? s.players.reduce<number | null>((min, p) => (p.graceUntil !== null && (min === null || p.graceUntil < min) ? p.graceUntil : min), null) : null

/**
 * Seats whose grace ended at or before `at` are given up first, in the order their graces ended:
 * a player who stayed disconnected leaves at the first event of the match that comes after their
 * grace (the API nodes publish one for that, see the README), whatever event it is. Pure.
 */
function expireGraces(s: MatchState, at: number, outputs: MatchOutput[]): MatchState {
  if (!live(s.status)) return s
  const expired = s.players.filter((p) => p.graceUntil !== null && p.graceUntil <= at).sort((a, b) => a.graceUntil! - b.graceUntil!)
  for (const p of expired) {
    s = withoutPlayer(s, p.player)
    outputs.push({ channel: 'match', data: { kind: 'left', player: p.player, reason: 'disconnected', status: s.status } })
  }
  return s
}

function withoutPlayer(s: MatchState, player: string): MatchState {
  const players = s.players.filter((p) => p.player !== player)
  // A full match opens again; a started one keeps going with one player fewer.
  return { ...s, players, status: s.status === 'full' ? 'open' : s.status }
}

const reject = (outputs: MatchOutput[], state: MatchState | undefined, match: string, player: string, reason: MatchJoinRejection): Evolved => {
  if (state) outputs.push({ channel: 'match', data: { kind: 'rejected', player, reason, status: state.status } })
  outputs.push({ channel: 'user', user: player, data: { kind: 'match.join', match, accepted: false, reason } })
  return { state, outputs }
}

/**
 * The match after one event, with what to tell. Rules (README "Matches" mirrors them):
 * - Before anything else, seats whose grace ended by the event's time are given up.
 * - created: opens the match; a second `match.created` of the same id is refused.
 * - join: accepted while open (the last seat makes it full); otherwise rejected with the reason:
 *   `unknown_match`, `already_joined`, `full`, `started`, `finished` or `aborted`. Both the match's
 *   channel and the player's `user:<sub>` are told. The seat starts not yet connected, kept until
 *   `at + graceMs` (the join grace): a player who never connects to `match:<id>` loses it then, as
 *   one who disconnected would (a seat squatted in every lobby keeps none of them filled).
 * - leave: a seated player leaves (a full match opens again). `reason: "disconnected"` events (the
 *   API nodes', once a grace ended) do nothing of their own: only the grace expiry above gives a
 *   seat up, so one that comes early (or after a reconnect) changes nothing. `reason: "revoked"`
 *   (the API nodes', when presence saw the player leave because their credential was revoked)
 *   gives the seat up at once, told as `left` with reason `revoked`.
 * - ready: a seated player of an open or full match is ready (once).
 * - player.connection: a seated player of an open, full or started match is disconnected (their
 *   seat is kept until `at + graceMs`) or connected (first or again: the grace is off).
 * - start: an open or full match with at least one player starts. finish: a started match finishes
 *   with its standings (the results are scored once: `finished`). Only the lineup's results count (the
 *   players seated at the start, leavers included); the finish's others are ignored and named in
 *   `ignored` (the finish itself applies: one bad entry does not cost the real players their results).
 *   abort: any match not yet over. Repeats (start of a started match, a second finish or abort) change nothing; transitions that
 *   cannot happen (finish of a match not started or aborted, abort of a finished one, start of one
 *   over, anything on an unknown match) are refused, so a game server's bug shows as a dead letter.
 */
export function evolveMatch(current: MatchState | undefined, e: MatchEvent): Evolved {
  const outputs: MatchOutput[] = []
  const state = current ? expireGraces(current, e.at, outputs) : undefined
  const same = (s: MatchState | undefined = state): Evolved => ({ state: s, outputs })
  switch (e.type) {
    case 'match.created': {
      if (state) return { ...same(), refused: `match ${JSON.stringify(e.match)} already exists` }
      const created: MatchState = {
        match: e.match,
        mode: e.mode,
        maxPlayers: e.maxPlayers,
        properties: e.properties ?? {},
        status: 'open',
        players: [],
        lineup: null,
        results: null,
        ignored: null,
        createdAt: e.at,
        startedAt: null,
        endedAt: null,
        createdSeq: e.seq,
      }
      outputs.push({ channel: 'match', data: { kind: 'created', match: matchView(created), status: 'open' } })
      return same(created)
    }
    case 'match.join': {
      if (!state) return reject(outputs, state, e.match, e.player, 'unknown_match')
      if (state.players.some((p) => p.player === e.player)) return reject(outputs, state, e.match, e.player, 'already_joined')
      if (state.status !== 'open') return reject(outputs, state, e.match, e.player, state.status)
      const seat: Seat =
        e.graceMs === undefined
          ? { player: e.player, ready: false, connected: true, disconnectedAt: null, graceUntil: null }
          : { player: e.player, ready: false, connected: false, disconnectedAt: null, graceUntil: e.at + e.graceMs }
      const players = [...state.players, seat]
      const next: MatchState = { ...state, players, status: players.length >= state.maxPlayers ? 'full' : 'open' }
      // The seat as it starts (waiting for its player's first connection), so a subscriber holds what REST shows.
      outputs.push({
        channel: 'match',
        data: { kind: 'joined', player: e.player, connected: seat.connected, ...(seat.graceUntil !== null ? { graceUntil: iso(seat.graceUntil) } : {}), status: next.status },
      })
      outputs.push({ channel: 'user', user: e.player, data: { kind: 'match.join', match: e.match, accepted: true } })
      return same(next)
    }
    case 'match.leave': {
      if (!state || e.reason === 'disconnected' || !live(state.status) || !state.players.some((p) => p.player === e.player)) return same()
      const next = withoutPlayer(state, e.player)
      outputs.push({ channel: 'match', data: { kind: 'left', player: e.player, reason: e.reason, status: next.status } })
      return same(next)
    }
    case 'match.ready': {
      if (!state || (state.status !== 'open' && state.status !== 'full')) return same()
      const seat = state.players.find((p) => p.player === e.player)
      if (!seat || seat.ready) return same()
      const next = { ...state, players: state.players.map((p) => (p === seat ? { ...p, ready: true } : p)) }
      outputs.push({ channel: 'match', data: { kind: 'ready', player: e.player, status: next.status } })
      return same(next)
    }
    case 'match.player.connection': {
      if (!state || !live(state.status)) return same()
      const seat = state.players.find((p) => p.player === e.player)
      if (!seat || seat.connected === e.connected) return same()
      const changed: Seat = e.connected
        ? { ...seat, connected: true, disconnectedAt: null, graceUntil: null }
        : { ...seat, connected: false, disconnectedAt: e.at, graceUntil: e.at + e.graceMs }
      const next = { ...state, players: state.players.map((p) => (p === seat ? changed : p)) }
      outputs.push({
        channel: 'match',
        data: { kind: 'connection', player: e.player, connected: e.connected, ...(changed.graceUntil !== null ? { graceUntil: iso(changed.graceUntil) } : {}), status: next.status },
      })
      // A grace of 0: the seat is given up at once.
      return same(e.connected ? next : expireGraces(next, e.at, outputs))
    }
    case 'match.start': {
      if (!state) return { ...same(), refused: `no match ${JSON.stringify(e.match)}` }
      if (state.status === 'started') return same()
      if (state.status !== 'open' && state.status !== 'full') return { ...same(), refused: `match ${JSON.stringify(e.match)} is ${state.status}: it cannot start` }
      if (state.players.length === 0) return { ...same(), refused: `match ${JSON.stringify(e.match)} has no players: it cannot start` }
      const next: MatchState = { ...state, status: 'started', startedAt: e.at, lineup: state.players.map((p) => p.player) }
      outputs.push({ channel: 'match', data: { kind: 'started', status: 'started', at: iso(e.at) } })
      return same(next)
    }
    case 'match.finish': {
      if (!state) return { ...same(), refused: `no match ${JSON.stringify(e.match)}` }
      if (state.status === 'finished') return same()
      // An aborted match too: its results would otherwise be dropped without a trace.
      if (state.status !== 'started') return { ...same(), refused: `match ${JSON.stringify(e.match)} is ${state.status}: only a started match finishes` }
      // A row started before lineups were recorded has its lineup from the migration (its seats then).
      const lineup = new Set(state.lineup ?? state.players.map((p) => p.player))
      const results = standingsOf(e.results.filter((r) => lineup.has(r.player)))
      const ignored = e.results.filter((r) => !lineup.has(r.player)).map((r) => r.player)
      const next: MatchState = { ...state, status: 'finished', results, ignored, endedAt: e.at, players: state.players.map((p) => ({ ...p, graceUntil: null })) }
      outputs.push({ channel: 'match', data: { kind: 'finished', results, ...(ignored.length > 0 ? { ignored } : {}), status: 'finished', at: iso(e.at) } })
      return { state: next, outputs, finished: results }
    }
    case 'match.abort': {
      if (!state) return { ...same(), refused: `no match ${JSON.stringify(e.match)}` }
      if (state.status === 'aborted') return same()
      if (state.status === 'finished') return { ...same(), refused: `match ${JSON.stringify(e.match)} is finished: it cannot be aborted` }
      const next: MatchState = { ...state, status: 'aborted', endedAt: e.at, players: state.players.map((p) => ({ ...p, graceUntil: null })) }
      outputs.push({ channel: 'match', data: { kind: 'aborted', status: 'aborted', at: iso(e.at) } })
      return same(next)
    }
    default: {
      const never: never = e
      throw new Error(`unknown match event ${JSON.stringify(never)}`)
    }
  }
}
