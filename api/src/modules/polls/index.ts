import { Elysia } from 'elysia'
import type { Db } from '../../../../core/db/client'
import type { AuthPlugin } from '../../auth/plugin'
import { ErrorResponse } from '../../error-model'
import { NotFound } from '../../errors'
import { PollParams, PollView } from './model'
import { readPoll } from './service'

/** Public poll reads (anyone allowed to connect). */
export function pollsModule({ db, auth }: { db: Db; auth: AuthPlugin }) {
  return new Elysia({ prefix: '/v1/polls' }).use(auth).get(
    '/:poll',
    async ({ params }) => {
      const poll = await readPoll(db, params.poll)
      if (!poll) throw new NotFound('poll_not_found', `no poll ${params.poll}`)
      return poll
    },
    {
      auth: 'viewer',
      params: PollParams,
      response: { 200: PollView, 401: ErrorResponse, 404: ErrorResponse, 422: ErrorResponse },
      detail: {
        tags: ['live'],
        summary: 'A poll with its tallies',
        description:
          "Each voter's first valid vote counts (the voter is the `poll.voted` event's principal); the others are `ignoredVotes`. " +
          'A poll that never opened is 404 poll_not_found. Live: subscribe to `poll:<id>`.',
      },
    },
  )
}
