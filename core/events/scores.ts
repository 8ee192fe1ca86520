import { Type, type Static } from '@sinclair/typebox'
import { ActorId, FiniteNumber, Name } from './fields'

/** A player's score on a board. Key: board + player. */
export const ScoreSubmitted = Type.Object(
  { board: Name, player: ActorId, score: FiniteNumber },
  { additionalProperties: false, $id: 'score.submitted@1' },
)
export type ScoreSubmitted = Static<typeof ScoreSubmitted>
