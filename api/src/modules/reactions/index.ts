import { Elysia } from 'elysia'
import type { Db } from '../../../../core/db/client'
import type { AuthPlugin } from '../../auth/plugin'
import { ErrorResponse } from '../../error-model'
import { ReactionTotals, StreamParams } from './model'
import { streamReactions } from './service'

/** A stream's reaction totals (public: anyone allowed to connect). */
export function reactionsModule({ db, auth }: { db: Db; auth: AuthPlugin }) {
  return new Elysia({ prefix: '/v1/streams' }).use(auth).get('/:stream/reactions', ({ params }) => streamReactions(db, params.stream), {
    auth: 'viewer',
    params: StreamParams,
    response: { 200: ReactionTotals, 401: ErrorResponse, 422: ErrorResponse },
    detail: {
      tags: ['reactions'],
      summary: "A stream's reaction totals",
      description:
        'Reactions per emoji over the stream\'s whole history, as applied by the workers (each `reaction.sent` counted once). ' +
        'Live: subscribe to `reactions:<stream>` for one update per window.',
    },
  })
}
