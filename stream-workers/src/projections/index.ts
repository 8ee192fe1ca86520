import { chatProjection } from './chat/apply'
import { leaderboardsProjection } from './leaderboards/apply'
import { pollsProjection } from './polls/apply'
import { streamsProjection } from './streams/apply'
import { reactionsProjection } from './reactions/apply'
import { matchesProjection } from './matches/apply'
import type { Projection } from './types'

export type { Projection, ProjectionName } from './types'

/** Every projection the workers run; each partition gets one runner per projection. */
export const projections: readonly Projection[] = [leaderboardsProjection, chatProjection, streamsProjection, pollsProjection, reactionsProjection, matchesProjection]
