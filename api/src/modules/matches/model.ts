import { t } from 'elysia'
import { Name } from '../../../../core/events'
import { integerParam } from '../../params'

export const MatchParams = t.Object({ match: Name })
export const ModeParams = t.Object({ mode: Name })

const Status = t.Union([t.Literal('open'), t.Literal('full'), t.Literal('started'), t.Literal('finished'), t.Literal('aborted')])

/** A match (see MatchView in core/channels.ts). */
export const MatchAnswer = t.Object({
  match: t.String(),
  mode: t.String(),
  status: Status,
  maxPlayers: t.Integer(),
  properties: t.Optional(t.Record(t.String(), t.Union([t.String(), t.Number(), t.Boolean()]))),
  players: t.Array(
    t.Object({
      player: t.String(),
      ready: t.Boolean(),
      connected: t.Boolean({ description: 'false from the join until their first connection to match:<id>, and once all their connections to it closed, on every node' }),
      graceUntil: t.Optional(t.String({ description: 'ISO 8601: while not (yet, or any more) connected, when the seat is given up unless they connect first' })),
    }),
    { description: 'seated players, in the order they were seated' },
  ),
  results: t.Optional(t.Array(t.Object({ player: t.String(), score: t.Number(), rank: t.Integer() }), { description: 'final standings of the lineup (the players seated when the match started, leavers included): highest score first, ties share a rank' })),
  ignored: t.Optional(t.Array(t.String(), { description: 'players the finish named who were not in the lineup: their results were ignored (absent when none)' })),
  createdAt: t.String(),
  startedAt: t.Optional(t.String()),
  endedAt: t.Optional(t.String()),
})

export const MatchListQuery = t.Object({
  status: t.Optional(
    t.Union([Status], {
      error: `status must be one of ${Status.anyOf.map((s) => s.const).join(', ')}`,
      description: 'only matches in this status (default: open)',
    }),
  ),
  mode: t.Optional(Name),
  limit: integerParam('limit', { minimum: 1, maximum: 100, default: 20 }),
  after: t.Optional(t.String({ maxLength: 64, error: 'after must be the `next` cursor of a previous page', description: 'the `next` of the previous page' })),
})
export type MatchListQuery = typeof MatchListQuery.static

export const MatchSummary = t.Object({
  match: t.String(),
  mode: t.String(),
  status: Status,
  maxPlayers: t.Integer(),
  players: t.Integer({ description: 'seated players' }),
  properties: t.Optional(t.Record(t.String(), t.Union([t.String(), t.Number(), t.Boolean()]))),
  createdAt: t.String(),
})

export const MatchPage = t.Object({
  matches: t.Array(MatchSummary, { description: 'oldest first (the order they were created in)' }),
  next: t.Union([t.String(), t.Null()], { description: 'pass as `after` for the following page; null: this page ends the list' }),
})
export type MatchPage = typeof MatchPage.static

export const ModeBody = t.Object({ board: Name }, { additionalProperties: false })
export const ModeAnswer = t.Object({ mode: t.String(), board: t.String(), updatedAt: t.String() })
export const ModeList = t.Object({ modes: t.Array(ModeAnswer) })
