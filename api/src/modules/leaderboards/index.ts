import { Elysia } from 'elysia'
import type { Db } from '../../../../core/db/client'
import type { AuthPlugin } from '../../auth/plugin'
import { ErrorResponse } from '../../error-model'
import { NotFound } from '../../errors'
import { BoardParams, MAX_OFFSET, NeighboursQuery, PageQuery, PlayerParams, PlayerStanding, RankedPage } from './model'
import { leaderboardPage, playerStanding } from './service'

/** Public leaderboard reads (anyone allowed to connect). */
export function leaderboardsModule({ db, auth }: { db: Db; auth: AuthPlugin }) {
  return new Elysia({ prefix: '/v1/leaderboards' })
    .use(auth)
    .get('/:board', ({ params, query }) => leaderboardPage(db, params.board, query), {
      auth: 'viewer',
      params: BoardParams,
      query: PageQuery,
      response: { 200: RankedPage, 401: ErrorResponse, 422: ErrorResponse },
      detail: {
        tags: ['leaderboards'],
        summary: 'A page of a leaderboard',
        description:
          'Ranked by score (per board order), then earliest to reach it, then player id. Unknown boards are empty. ' +
          `\`offset\` goes at most ${MAX_OFFSET} deep; beyond, follow \`next\` with \`after\` (keyset: any depth at the same cost).`,
      },
    })
    .get(
      '/:board/players/:player',
      async ({ params, query }) => {
        const standing = await playerStanding(db, params.board, params.player, query)
        if (!standing) throw new NotFound('player_not_ranked', `${params.player} has no score on ${params.board}`)
        return standing
      },
      {
        auth: 'viewer',
        params: PlayerParams,
        query: NeighboursQuery,
        response: { 200: PlayerStanding, 401: ErrorResponse, 404: ErrorResponse, 422: ErrorResponse },
        detail: { tags: ['leaderboards'], summary: "A player's rank with neighbours" },
      },
    )
}
