import { Elysia } from 'elysia'
import type { Db } from '../../../../core/db/client'
import type { AuthPlugin } from '../../auth/plugin'
import { ErrorResponse } from '../../error-model'
import { NotFound } from '../../errors'
import { LivePage, LiveQuery, StreamAnswer, StreamParams } from './model'
import { liveStreams, readStream } from './service'

/** Public stream reads (anyone allowed to connect). */
export function streamsModule({ db, auth }: { db: Db; auth: AuthPlugin }) {
  return new Elysia({ prefix: '/v1/streams' })
    .use(auth)
    .get('', ({ query }) => liveStreams(db, query), {
      auth: 'viewer',
      query: LiveQuery,
      response: { 200: LivePage, 401: ErrorResponse, 422: ErrorResponse },
      detail: {
        tags: ['live'],
        summary: 'Live streams, most viewers first',
        description: '`?status=live` (the default and only value). Pages of `limit` (at most 100); follow `next` with `after`.',
      },
    })
    .get(
      '/:stream',
      async ({ params }) => {
        const stream = await readStream(db, params.stream)
        if (!stream) throw new NotFound('stream_not_found', `no stream ${params.stream}`)
        return stream
      },
      {
        auth: 'viewer',
        params: StreamParams,
        response: { 200: StreamAnswer, 401: ErrorResponse, 404: ErrorResponse, 422: ErrorResponse },
        detail: {
          tags: ['live'],
          summary: "A stream's state, viewers and open poll",
          description: 'A stream no stream.* event named is 404 stream_not_found. Live: subscribe to `stream:<id>`.',
        },
      },
    )
}
