import { t } from 'elysia'
import { ActorId, Name } from '../../../../core/events'

export const SortOrder = t.Union([t.Literal('desc'), t.Literal('asc')])
export const ScoreOperator = t.Union([t.Literal('best'), t.Literal('latest'), t.Literal('sum')])

export const BoardParams = t.Object({ board: Name })
export const PlayerParams = t.Object({ board: Name, player: ActorId })

export const PageQuery = t.Object({
  limit: t.Integer({ minimum: 1, maximum: 100, default: 10 }),
  offset: t.Integer({ minimum: 0, default: 0 }),
})
export const NeighboursQuery = t.Object({ neighbours: t.Integer({ minimum: 0, maximum: 25, default: 2 }) })

export const Entry = t.Object({ rank: t.Integer({ minimum: 1 }), player: t.String(), score: t.Number() })
export type Entry = typeof Entry.static

export const BoardPage = t.Object({
  board: t.String(),
  order: SortOrder,
  operator: ScoreOperator,
  entries: t.Array(Entry),
})
export type BoardPage = typeof BoardPage.static

export const PlayerStanding = t.Object({
  board: t.String(),
  player: t.String(),
  rank: t.Integer({ minimum: 1 }),
  score: t.Number(),
  above: t.Array(Entry, { description: 'better-ranked neighbours, best first' }),
  below: t.Array(Entry, { description: 'worse-ranked neighbours, best first' }),
})
export type PlayerStanding = typeof PlayerStanding.static
