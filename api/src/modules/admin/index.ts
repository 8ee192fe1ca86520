import { Elysia } from 'elysia'
import type { Config } from '../../../../core/config'
import { callerOf } from '../../../../core/events'
import type { Db } from '../../../../core/db/client'
import type { NatsConnection } from '@nats-io/transport-node'
import { authPlugin } from '../../auth'
import { ErrorResponse } from '../../error-model'
import { PublishResponse } from '../events/model'
import type { Ingest } from '../events/service'
import { boardConfig } from '../leaderboards/service'
import { BoardConfig, BoardConfigBody, BoardParams, DeadLetters, DeadLettersQuery, MessageParams, ProjectionsReport, RebuildJob, RebuildParams, RebuildQuery, WorkersReport } from './model'
import { createRebuilds } from './rebuild'
import { createWorkersReader, listDeadLetters, putBoardConfig, readProjections } from './service'

export type AdminDeps = {
  config: Config
  db: Db
  nc: NatsConnection
  ingest: Ingest
}

const denied = { 401: ErrorResponse, 403: ErrorResponse }

/** /admin: board rules, moderation, projection status, workers and dead letters. Admin token only. */
export function adminModule({ config, db, nc, ingest }: AdminDeps) {
  const workers = createWorkersReader(config, nc)
  const rebuilds = createRebuilds({ config, nc, db })
  return new Elysia({ prefix: '/admin', detail: { tags: ['admin'] } })
    .use(authPlugin(config))
    .guard({ auth: 'admin' }, (app) =>
      app
        .get('/leaderboards/:board', ({ params }) => boardConfig(db, params.board), {
          params: BoardParams,
          response: { 200: BoardConfig, ...denied },
          detail: { summary: "A board's rules (defaults when not configured)" },
        })
        .put('/leaderboards/:board', ({ params, body }) => putBoardConfig(db, params.board, body), {
          params: BoardParams,
          body: BoardConfigBody,
          response: { 200: BoardConfig, 409: ErrorResponse, 422: ErrorResponse, ...denied },
          detail: {
            summary: "Set a board's rules",
            description: '409 board_has_scores when the board has entries and the rules would change.',
          },
        })
        .delete(
          '/rooms/:room/messages/:id',
          async ({ params, publisher, status }) =>
            status(202, {
              results: await ingest.publish([{ type: 'chat.message.deleted', data: { room: params.room, messageId: params.id } }], callerOf(publisher)),
            }),
          {
            params: MessageParams,
            response: { 202: PublishResponse, 503: ErrorResponse, ...denied },
            detail: { summary: 'Delete a chat message', description: 'Publishes chat.message.deleted; the deletion applies through the stream.' },
          },
        )
        .get('/projections', () => readProjections({ config, db, nc }), {
          response: { 200: ProjectionsReport, 503: ErrorResponse, ...denied },
          detail: { summary: 'Projection progress and lag' },
        })
        .post('/projections/:name/rebuild', async ({ params, query, status }) => status(202, await rebuilds.request(params.name, { force: query.force })), {
          params: RebuildParams,
          query: RebuildQuery,
          response: { 202: RebuildJob, 404: ErrorResponse, 409: ErrorResponse, 503: ErrorResponse, ...denied },
          detail: {
            summary: 'Rebuild a read model from the start of the event stream',
            description:
              'A stream worker replays the stream into a shadow copy while live traffic continues, then swaps it in; rebuilt channels get a new epoch (subscribers re-sync). 404 unknown projection; 409 rebuild_in_progress; 409 history_incomplete when retention removed the first events, or NATS lost an earlier stream whose events the model holds (unless force=true).',
          },
        })
        .get('/projections/:name/rebuild', ({ params }) => rebuilds.get(params.name), {
          params: RebuildParams,
          response: { 200: RebuildJob, 404: ErrorResponse, 503: ErrorResponse, ...denied },
          detail: { summary: "A projection's latest rebuild job and its progress" },
        })
        .get('/workers', () => workers(), {
          response: { 200: WorkersReport, 503: ErrorResponse, ...denied },
          detail: {
            summary: 'Live stream workers and the partitions each holds',
            description: 'From the lease bucket: a worker is listed until its heartbeat expires (FANFARE_LEASE_TTL_MS). Empty before any worker started.',
          },
        })
        .get('/dead-letters', async ({ query }) => ({ deadLetters: await listDeadLetters(db, query) }), {
          query: DeadLettersQuery,
          response: { 200: DeadLetters, ...denied },
          detail: { summary: 'Messages that could not be applied, newest first' },
        }),
    )
}
