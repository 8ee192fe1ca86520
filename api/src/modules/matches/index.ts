import { Elysia } from 'elysia'
import type { Db } from '../../../../core/db/client'
import type { AuthPlugin } from '../../auth/plugin'
import { ErrorResponse } from '../../error-model'
import { NotFound } from '../../errors'
import { MatchAnswer, MatchListQuery, MatchPage, MatchParams } from './model'
import { listMatches, readMatch } from './service'

/** Public match reads (anyone allowed to connect). */
export function matchesModule({ db, auth }: { db: Db; auth: AuthPlugin }) {
  return new Elysia({ prefix: '/v1/matches' })
    .use(auth)
    .get('', ({ query }) => listMatches(db, query), {
      auth: 'viewer',
      query: MatchListQuery,
      response: { 200: MatchPage, 401: ErrorResponse, 422: ErrorResponse },
      detail: {
        tags: ['games'],
        summary: 'Matches in one status (open by default), oldest first',
        description: '`?status=open&mode=duel`: a lobby browser. Pages of `limit` (at most 100); follow `next` with `after`.',
      },
    })
    .get(
      '/:match',
      async ({ params }) => {
        const match = await readMatch(db, params.match)
        if (!match) throw new NotFound('match_not_found', `no match ${params.match}`)
        return match
      },
      {
        auth: 'viewer',
        params: MatchParams,
        response: { 200: MatchAnswer, 401: ErrorResponse, 404: ErrorResponse, 422: ErrorResponse },
        detail: {
          tags: ['games'],
          summary: 'A match: its status, seats (ready, connected) and final standings',
          description: 'A match no match.created made is 404 match_not_found. Live: subscribe to `match:<id>`; your own join decisions come on `user:<sub>`.',
        },
      },
    )
}
