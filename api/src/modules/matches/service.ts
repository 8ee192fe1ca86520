import { and, asc, eq, gt, inArray, sql } from 'drizzle-orm'
import { channelOf, type MatchView } from '../../../../core/channels'
import type { Db } from '../../../../core/db/client'
import { channelVersions, matches, matchModes } from '../../../../core/db/schema'
import { matchStateOfRow, matchView } from '../../../../core/matches'
import { Invalid } from '../../errors'
import { readChannelSnapshot, type ChannelSnapshot } from '../channel-snapshot'
import type { MatchListQuery, MatchPage } from './model'
import type { SeatRow } from './seat-book'

type MatchRow = typeof matches.$inferSelect

const viewOfRow = (r: MatchRow): MatchView => matchView(matchStateOfRow(r))

/** A match as `GET /v1/matches/:match` answers it; undefined when no `match.created` made it. */
export async function readMatch(db: Db, match: string): Promise<MatchView | undefined> {
  const [row] = await db.select().from(matches).where(eq(matches.match, match))
  return row && viewOfRow(row)
}

/** The channel `match:<id>`: the match with its version and epoch; null data before it is created. */
export function matchSnapshot(db: Db, match: string): Promise<ChannelSnapshot<MatchView | null>> {
  return readChannelSnapshot(db, channelOf.match(match), async (q) => (await readMatch(q, match)) ?? null)
}

/**
 * The seats of the given matches (any status; ids with no match are left out), each with its
 * channel's version and epoch, read in one statement (the projection writes both in one): what
 * the seat watcher's book fills in on a match's first use. By primary key, so its cost follows the
 * ids asked for, not the number of live matches.
 */
export async function readSeats(db: Db, ids: string[]): Promise<SeatRow[]> {
  if (ids.length === 0) return []
  const rows = await db
    .select({ match: matches.match, status: matches.status, players: matches.players, version: channelVersions.version, epoch: channelVersions.epoch })
    .from(matches)
    .innerJoin(channelVersions, eq(channelVersions.channel, sql`'match:' || ${matches.match}`))
    .where(inArray(matches.match, ids))
  return rows.map((r) => ({ match: r.match, status: r.status, players: r.players.map((p) => p.player), version: Number(r.version), epoch: r.epoch }))
}

const cursorMessage = 'after must be the `next` cursor of a previous page of matches'

/**
 * A page of matches in one status (open by default), of one mode if given, in the order they were
 * created (keyset on the stream sequence of `match.created`, from the (status, mode, created_seq)
 * or (status, created_seq) index). The cursor is that sequence: stable whatever joins and leaves happen between pages.
 */
export async function listMatches(db: Db, q: MatchListQuery): Promise<MatchPage> {
  let after: number | undefined
  if (q.after !== undefined) {
    after = Number(q.after)
    if (!/^\d{1,15}$/.test(q.after) || !Number.isSafeInteger(after)) throw new Invalid('invalid_request', cursorMessage, [{ path: '/after', message: cursorMessage, in: 'query' }])
  }
  const rows = await db
    .select()
    .from(matches)
    .where(and(eq(matches.status, q.status ?? 'open'), q.mode === undefined ? undefined : eq(matches.mode, q.mode), after === undefined ? undefined : gt(matches.createdSeq, after)))
    // One status (and mode): either index holds its rows in created_seq order.
    .orderBy(asc(matches.createdSeq))
    .limit(q.limit + 1)
  const shown = rows.slice(0, q.limit)
  const last = shown.at(-1)
  return {
    matches: shown.map((r) => ({
      match: r.match,
      mode: r.mode,
      status: r.status,
      maxPlayers: r.maxPlayers,
      players: r.playerCount,
      ...(Object.keys(r.properties).length > 0 ? { properties: r.properties } : {}),
      createdAt: r.createdAt.toISOString(),
    })),
    next: rows.length > q.limit && last ? String(last.createdSeq) : null,
  }
}

const modeOf = (r: typeof matchModes.$inferSelect) => ({ mode: r.mode, board: r.board, updatedAt: r.updatedAt.toISOString() })

/** Names the board a mode's match results are scored on (from the next finish on). */
export async function putMode(db: Db, mode: string, board: string) {
  const [row] = await db
    .insert(matchModes)
    .values({ mode, board })
    .onConflictDoUpdate({ target: matchModes.mode, set: { board, updatedAt: sql`now()` } })
    .returning()
  return modeOf(row)
}

export async function listModes(db: Db) {
  return { modes: (await db.select().from(matchModes).orderBy(asc(matchModes.mode))).map(modeOf) }
}
