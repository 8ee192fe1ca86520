import { inArray, sql, type SQL } from 'drizzle-orm'
import { channelOf } from '../../../../core/channels'
import type { Db } from '../../../../core/db/client'
import { recordset, fromExcluded } from '../../../../core/db/recordset'
import { matches, matchModes } from '../../../../core/db/schema'
import { isPropertyName, type StoredEvent } from '../../../../core/events'
import { DEFAULT_MATCH_GRACE_MS, evolveMatch, MATCH_RESULTS_BY, matchStateOfRow, nextGraceEnd, resultEventId, type MatchEvent, type MatchState } from '../../../../core/matches'
import type { Applied, Change, Projection, SequencedEvent } from '../types'
import { projectionAreas } from '../../../../core/projections'

type MatchStoredEvent = Extract<StoredEvent, { type: `match.${string}` }>


/** A user's id from their principal (`u:<sub>`); undefined for any other principal. */
const userOf = (by: string) => (by.startsWith('u:') ? by.slice(2) : undefined)

/**
 * The state machine's view of a stored event, or why it can never apply. Times are JetStream's
 * stored times (one clock for every node, and the same in a rebuild): grace ends and the periods
 * of results depend on nothing else. Players are the event's principal (`u:<sub>`), except in the
 * API nodes' events (`system`), which name the player.
 */
function toMatchEvent({ event, seq, storedAt }: SequencedEvent): MatchEvent | { refused: string } {
  const e = event as MatchStoredEvent
  const at = storedAt.getTime()
  const player = userOf(e.by)
  const needPlayer = { refused: `${e.type} by ${JSON.stringify(e.by)}: only users have seats` }
  switch (e.type) {
    case 'match.created': {
      // Names the API refuses now (isPropertyName) are left out of events stored before, so every
      // reader (REST, channels, the SDK's state) sees the same properties, all short scalars (the
      // schema checks only the values of well-named keys).
      const properties = e.data.properties && Object.fromEntries(Object.entries(e.data.properties).filter(([k]) => isPropertyName(k)))
      return { type: e.type, match: e.data.match, mode: e.data.mode, maxPlayers: e.data.maxPlayers, properties, at, seq }
    }
    case 'match.join':
      return player === undefined ? needPlayer : { type: e.type, match: e.data.match, player, graceMs: e.data.graceMs, at }
    case 'match.ready':
      return player === undefined ? needPlayer : { type: e.type, match: e.data.match, player, at }
    case 'match.leave': {
      if (e.by === 'system') {
        if (e.data.player === undefined) return { refused: 'match.leave by the API nodes names no player' }
        return { type: e.type, match: e.data.match, player: e.data.player, reason: e.data.reason ?? 'disconnected', at }
      }
      // A user leaves as themselves: a `player` they name is not theirs to give up.
      return player === undefined ? needPlayer : { type: e.type, match: e.data.match, player, reason: 'left', at }
    }
    case 'match.start':
    case 'match.abort':
      return { type: e.type, match: e.data.match, at }
    case 'match.finish':
      return { type: e.type, match: e.data.match, results: e.data.results, at }
    case 'match.player.connection':
      return { type: e.type, match: e.data.match, player: e.data.player, connected: e.data.connected, graceMs: e.data.graceMs ?? DEFAULT_MATCH_GRACE_MS, at }
    default: {
      // The batch dead-letters events of other areas before they get here.
      throw new Error(`matches projection got ${event.type}`)
    }
  }
}

/**
 * Applies a batch of `match.*` events: loads the batch's matches (and, if one finishes, the modes'
 * boards) and runs the state machine (core/matches.ts) over them in stream order. Every event of a
 * match is in one partition (key: match), applied by its one owner in order, so every join is
 * decided exactly once, in order: however many race for the last seat, one gets it. Returns the
 * changed matches as one upsert; the changes of `match:<id>` and of the players' `user:<sub>`
 * (their join decisions); the refusals (dead letters); and, for a match that finished, its results
 * as `score.submitted` events on the mode's board (derived events, see Applied.events), with ids
 * fixed by the match and the result's index: written with the batch, published after it, scored
 * once.
 */
export async function applyMatches(db: Db, events: SequencedEvent[]): Promise<Applied> {
  const list: { seq: number; ev: MatchEvent; storedAt: Date }[] = []
  const refused: { seq: number; reason: string }[] = []
  for (const e of events) {
    const ev = toMatchEvent(e)
    if ('refused' in ev) refused.push({ seq: e.seq, reason: ev.refused })
    else list.push({ seq: e.seq, ev, storedAt: e.storedAt })
  }
  if (list.length === 0) return { changes: [], refused }

  const names = [...new Set(list.map(({ ev }) => ev.match))]
  const rows = await db.select().from(matches).where(inArray(matches.match, names))
  const state = new Map<string, MatchState>(rows.map((r) => [r.match, matchStateOfRow(r)]))
  // The board of each mode that finishes a match in this batch, read only then.
  const finishing = list.filter(({ ev }) => ev.type === 'match.finish').map(({ ev }) => ev.match)
  const boards = new Map<string, string>()
  if (finishing.length > 0) {
    const modes = new Set<string>()
    for (const { ev } of list) if (ev.type === 'match.created') modes.add(ev.mode)
    for (const s of state.values()) modes.add(s.mode)
    for (const m of await db.select().from(matchModes).where(inArray(matchModes.mode, [...modes]))) boards.set(m.mode, m.board)
  }

  const changes: Change[] = []
  const dirty = new Map<string, { state: MatchState; board: string | null }>()
  const scores: StoredEvent[] = []
  const boardOf = new Map<string, string | null>(rows.map((r) => [r.match, r.board]))
  for (const { seq, ev, storedAt } of list) {
    const r = evolveMatch(state.get(ev.match), ev)
    if (r.refused) refused.push({ seq, reason: r.refused })
    for (const o of r.outputs) changes.push(o.channel === 'match' ? { channel: channelOf.match(ev.match), data: o.data } : { channel: channelOf.user(o.user), data: o.data })
    if (!r.state || r.state === state.get(ev.match)) continue
    state.set(ev.match, r.state)
    if (r.finished) {
      const board = boards.get(r.state.mode) ?? null
      boardOf.set(ev.match, board)
      if (board !== null && ev.type === 'match.finish') {
        // Only the lineup's results (the standings); an ignored entry keeps its index unused, so
        // the ids stay those of the finish's entries.
        const counted = new Set(r.finished.map((s) => s.player))
        ev.results.forEach(({ player, score }, i) => {
          if (counted.has(player)) scores.push({ id: resultEventId(ev.match, i), by: MATCH_RESULTS_BY, type: 'score.submitted', v: 1, data: { board, player, score }, at: storedAt.toISOString() })
        })
      }
    }
    dirty.set(ev.match, { state: r.state, board: boardOf.get(ev.match) ?? null })
  }
  if (dirty.size === 0) return { changes, refused }

  const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString())
  const written = [...dirty.values()].map(({ state: s, board }) => ({
    match: s.match,
    mode: s.mode,
    max_players: s.maxPlayers,
    properties: s.properties,
    status: s.status,
    players: s.players,
    player_count: s.players.length,
    lineup: s.lineup,
    results: s.results,
    ignored: s.ignored,
    board,
    created_at: iso(s.createdAt),
    started_at: iso(s.startedAt),
    ended_at: iso(s.endedAt),
    created_seq: s.createdSeq,
    grace_until: iso(nextGraceEnd(s)),
  }))
  const columns = {
    match: 'text',
    mode: 'text',
    max_players: 'int',
    properties: 'jsonb',
    status: 'text',
    players: 'jsonb',
    player_count: 'int',
    lineup: 'jsonb',
    results: 'jsonb',
    ignored: 'jsonb',
    board: 'text',
    created_at: 'timestamptz',
    started_at: 'timestamptz',
    ended_at: 'timestamptz',
    created_seq: 'bigint',
    grace_until: 'timestamptz',
  }
  const write = (when: SQL) =>
    db
      .insert(matches)
      .select(
        sql`select match, mode, max_players, properties, status, players, player_count, lineup, results, ignored, board, created_at, started_at, ended_at, created_seq, grace_until from ${recordset('m', columns, written)} where ${when}`,
      )
      .onConflictDoUpdate({
        target: matches.match,
        set: fromExcluded(matches, 'status', 'players', 'playerCount', 'lineup', 'results', 'ignored', 'board', 'startedAt', 'endedAt', 'graceUntil'),
      })
  return { changes, write, refused, events: scores }
}

/** The matches read model: `match.*` events into matches; results into the event outbox. */
export const matchesProjection: Projection = { name: 'matches', area: projectionAreas.matches, apply: applyMatches }
