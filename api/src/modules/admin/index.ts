import { Elysia } from 'elysia'
import type { Config } from '../../../../core/config'
import type { Db } from '../../../../core/db/client'
import { siteOf } from '../../../../core/nats'
import type { NatsConnection } from '@nats-io/transport-node'
import { principalId } from '../../auth/principal'
import type { AuthPlugin } from '../../auth/plugin'
import type { RoomAccess } from '../../auth/rooms'
import { BodyErrors, ErrorResponse } from '../../error-model'
import { Conflict } from '../../errors'
import { PublishResponse } from '../events/model'
import type { Ingest } from '../events/service'
import type { Audit } from '../audit/service'
import { boardConfig } from '../leaderboards/service'
import { ModeAnswer, ModeBody, ModeList, ModeParams } from '../matches/model'
import { listModes, putMode } from '../matches/service'
import {
  BoardConfig,
  BoardConfigBody,
  BoardParams,
  DeadLetter,
  DeadLetterParams,
  DeadLetters,
  DeadLettersQuery,
  MessageParams,
  ProjectionsReport,
  RebuildJob,
  RebuildJobs,
  RebuildParams,
  RebuildQuery,
  ReplayResult,
  NodesReport,
  RoomSettings,
  RoomSettingsBody,
  RoomParams,
  WorkersReport,
} from './model'
import { createRebuilds } from './rebuild'
import { createNodesReader } from './nodes'
import { createWorkersReader, discardDeadLetter, getDeadLetter, listDeadLetters, putBoardConfig, readProjections, replayDeadLetter } from './service'

export type AdminDeps = {
  config: Config
  db: Db
  nc: NatsConnection
  ingest: Ingest
  auth: AuthPlugin
  rooms: RoomAccess
  /** Records each change an admin makes, after it succeeded. */
  audit: Audit
}

const denied = { 401: ErrorResponse, 403: ErrorResponse }

/**
 * /admin: board rules, game modes, rooms and moderation, projection status, workers and dead letters. Reads
 * need a key with `admin:read`, changes one with `admin:write` (the admin token has both).
 * Deleting a chat message is also open to users with the `moderator` role.
 */
export function adminModule({ config, db, nc, ingest, auth, rooms, audit }: AdminDeps) {
  const workers = createWorkersReader(config, nc)
  const rebuilds = createRebuilds({ config, nc, db })
  // Rebuild jobs, worker leases and the event stream's progress live in the hub's JetStream; an
  // edge node's connection reaches its own domain (README "Running at the edge").
  const atEdge = siteOf(config).kind === 'edge'
  const hubOnly = () => {
    if (atEdge) throw new Conflict('hub_only', 'this admin route reads the hub\'s JetStream: call it on an API node at the hub, not at an edge site')
  }
  const nodes = createNodesReader({ nc, prefix: config.FANFARE_SUBJECT_PREFIX })
  return new Elysia({ prefix: '/admin', detail: { tags: ['admin'] } })
    .use(auth)
    .get('/leaderboards/:board', ({ params }) => boardConfig(db, params.board), {
      auth: 'admin:read',
      params: BoardParams,
      response: { 200: BoardConfig, ...denied },
      detail: { summary: "A board's rules (defaults when not configured)" },
    })
    .put(
      '/leaderboards/:board',
      async ({ params, body, principal }) => {
        const rules = await putBoardConfig(db, params.board, body)
        await audit.record(principal, 'board.configured', `board:${params.board}`, { set: body, order: rules.order, operator: rules.operator })
        return rules
      },
      {
      auth: 'admin:write',
      params: BoardParams,
      body: BoardConfigBody,
      response: { 200: BoardConfig, 409: ErrorResponse, 422: ErrorResponse, 503: ErrorResponse, ...BodyErrors, ...denied },
      detail: {
        summary: "Set a board's rules",
        description: '409 board_has_scores when the board has entries and the rules would change.',
      },
    },
    )
    .get('/modes', () => listModes(db), {
      auth: 'admin:read',
      response: { 200: ModeList, ...denied },
      detail: { summary: 'Game modes and the boards their match results are scored on' },
    })
    .put(
      '/modes/:mode',
      async ({ params, body, principal }) => {
        const mode = await putMode(db, params.mode, body.board)
        await audit.record(principal, 'mode.configured', `mode:${params.mode}`, { board: body.board })
        return mode
      },
      {
        auth: 'admin:write',
        params: ModeParams,
        body: ModeBody,
        response: { 200: ModeAnswer, 422: ErrorResponse, 503: ErrorResponse, ...BodyErrors, ...denied },
        detail: {
          summary: "Name the board a mode's match results are scored on",
          description:
            'Each `match.finish` of a match of this mode applied from then on turns the results of its lineup (the players seated at its start) into scores on `board`, once (under the board\'s rules and ' +
            'in the period of the finish). A mode without a board keeps its results on the match only.',
        },
      },
    )
    .get('/rooms/:room', async ({ params }) => ({ room: params.room, visibility: await rooms.visibility(params.room) }), {
      auth: 'admin:read',
      params: RoomParams,
      response: { 200: RoomSettings, ...denied },
      detail: { summary: "A room's settings (public unless made private)" },
    })
    .put(
      '/rooms/:room',
      async ({ params, body, principal }) => {
        await rooms.setVisibility(params.room, body.visibility)
        await audit.record(principal, 'room.visibility_set', `room:${params.room}`, { visibility: body.visibility })
        return { room: params.room, visibility: body.visibility }
      },
      {
        auth: 'admin:write',
        params: RoomParams,
        body: RoomSettingsBody,
        response: { 200: RoomSettings, 422: ErrorResponse, 503: ErrorResponse, ...BodyErrors, ...denied },
        detail: {
          summary: "Set a room's visibility",
          description:
            'A private room is readable (REST and WebSocket) only by admin keys and users whose token `channels` claim matches `chat:<room>`. ' +
            'Subscribers who may no longer see it are dropped at once on every node, with a `forbidden` error frame.',
        },
      },
    )
    .delete(
      '/rooms/:room/messages/:id',
      async ({ params, principal, status }) => {
        const results = await ingest.publish([{ type: 'chat.message.deleted', data: { room: params.room, messageId: params.id } }], principal)
        await audit.record(principal, 'message.deleted', `message:${params.room}/${params.id}`, { eventId: results[0].id, seq: results[0].seq })
        return status(202, { results })
      },
      {
        auth: 'principal',
        params: MessageParams,
        response: { 202: PublishResponse, 503: ErrorResponse, ...denied },
        detail: {
          summary: 'Delete a chat message',
          description: 'Publishes chat.message.deleted (admins, keys with admin:write, users with the moderator role); the deletion applies through the stream.',
        },
      },
    )
    .get('/projections', () => (hubOnly(), readProjections({ config, db, nc })), {
      auth: 'admin:read',
      response: { 200: ProjectionsReport, 409: ErrorResponse, 503: ErrorResponse, ...denied },
      detail: { summary: 'Projection progress and lag, and the catch of unclaimed subjects (not a read model)' },
    })
    .post(
      '/projections/:name/rebuild',
      async ({ params, query, principal, status }) => {
        hubOnly()
        const target = `projection:${params.name}`
        // Recorded with the job or not requested (see Rebuilds.request): a repeat of a request whose
        // entry failed would be 409 rebuild_in_progress and could record nothing.
        const { job, recorded } = await rebuilds.request(params.name, {
          force: query.force,
          record: (tx, job) => audit.recordIn(tx, principal, 'rebuild.requested', target, { job: job.id, force: query.force }),
        })
        // A worker claimed the job before its entry could be taken back: record it now, or log it
        // as an error and answer 503 audit_failed.
        if (!recorded) await audit.record(principal, 'rebuild.requested', target, { job: job.id, force: query.force })
        return status(202, job)
      },
      {
      auth: 'admin:write',
      params: RebuildParams,
      query: RebuildQuery,
      response: { 202: RebuildJob, 404: ErrorResponse, 409: ErrorResponse, 503: ErrorResponse, ...denied },
      detail: {
        summary: 'Rebuild a read model from the start of the event stream',
        description:
          'A stream worker replays the stream into a shadow copy while live traffic continues, then swaps it in; rebuilt channels get a new epoch (subscribers re-sync). 404 unknown projection (unclaimed too: the catch of unclaimed subjects is no read model); 409 rebuild_in_progress; 409 history_incomplete when retention removed the first events, or NATS lost an earlier stream whose events the model holds (unless force=true).',
      },
    },
    )
    .get('/rebuilds', async () => (hubOnly(), { jobs: await rebuilds.list() }), {
      auth: 'admin:read',
      response: { 200: RebuildJobs, 409: ErrorResponse, 503: ErrorResponse, ...denied },
      detail: { summary: "Every projection's latest rebuild job (none for a projection never rebuilt)" },
    })
    .get('/projections/:name/rebuild', ({ params }) => (hubOnly(), rebuilds.get(params.name)), {
      auth: 'admin:read',
      params: RebuildParams,
      response: { 200: RebuildJob, 404: ErrorResponse, 409: ErrorResponse, 503: ErrorResponse, ...denied },
      detail: { summary: "A projection's latest rebuild job and its progress" },
    })
    .get('/workers', () => (hubOnly(), workers()), {
      auth: 'admin:read',
      response: { 200: WorkersReport, 409: ErrorResponse, 503: ErrorResponse, ...denied },
      detail: {
        summary: 'Live stream workers and the partitions each holds',
        description: 'From the lease bucket: a worker is listed until its heartbeat expires (FANFARE_LEASE_TTL_MS). Empty before any worker started.',
      },
    })
    .get(
      '/nodes',
      async () => {
        const [api, w] = await Promise.all([nodes(), workers()])
        return { ...api, ...w }
      },
      {
        auth: 'admin:read',
        response: { 200: NodesReport, 503: ErrorResponse, ...denied },
        detail: {
          summary: 'API nodes with their load, and stream workers with their partitions',
          description:
            'Every API node answers over NATS with its open WebSockets, subscriptions, channels and most watched channels, as they are now; ' +
            '`busiest` sums subscribers over the nodes. Workers as in GET /admin/workers. The answer waits ~250 ms for the last node.',
        },
      },
    )
    .get('/dead-letters', async ({ query }) => ({ deadLetters: await listDeadLetters(db, query) }), {
      auth: 'admin:read',
      query: DeadLettersQuery,
      response: { 200: DeadLetters, ...denied },
      detail: { summary: 'Messages that could not be applied, newest first' },
    })
    .post(
      '/dead-letters/:id/replay',
      async ({ params, principal }) => {
        const letter = await getDeadLetter(db, params.id)
        const target = `dead_letter:${letter.id}`
        const about = { projection: letter.projection, partition: letter.partition, streamSeq: letter.streamSeq, eventId: letter.eventId }
        // The worker records the replay in its own transaction (`audited`), so a replay this node
        // stopped waiting for is still in the audit log; a worker of an earlier version does not.
        const reply = await replayDeadLetter({ config, db, nc }, letter, principalId(principal))
        if (reply.outcome === 'still_failing') {
          if (!reply.audited) await audit.record(principal, 'dead_letter.replay_failed', target, { ...about, reason: reply.reason })
          throw new Conflict('still_failing', `dead letter ${letter.id} still cannot apply: ${reply.reason}`, { reason: reply.reason })
        }
        if (!reply.audited) await audit.record(principal, 'dead_letter.replayed', target, about)
        return { outcome: reply.outcome, deadLetter: letter }
      },
      {
        auth: 'admin:write',
        params: DeadLetterParams,
        response: { 200: ReplayResult, 404: ErrorResponse, 409: ErrorResponse, 422: ErrorResponse, 503: ErrorResponse, ...denied },
        detail: {
          summary: 'Replay a dead letter through its projection (after a fix)',
          description:
            'The worker that owns its projection and partition runs the stored message through the projection again, between its batches. ' +
            'If it applies, the read model changes, its channels get the change, and the dead letter is deleted, all in one transaction: exactly once, however often the request is repeated (a repeat is 404). ' +
            'It applies now, after the events that followed it in the stream. ' +
            '409 still_failing: it still cannot apply; the dead letter stays, with the new reason. ' +
            '409 rebuild_in_progress: a rebuild of its projection has not switched in yet (its switch would undo the replay); nothing changed, replay after the switch (a dead letter the rebuild still refuses keeps its id; one it applied is gone, 404). 404 unknown_dead_letter. ' +
            '503 no_worker (no worker runs) or replay_unavailable (the owner did not answer in 15 s, or could not do it now: try again; a repeat is 404 if it had applied).',
        },
      },
    )
    .delete(
      '/dead-letters/:id',
      // In one transaction with its audit entry: a repeat is 404 and could not record it.
      ({ params, principal }) =>
        db.transaction(async (tx) => {
          const letter = await discardDeadLetter(tx, params.id)
          await audit.recordIn(tx, principal, 'dead_letter.discarded', `dead_letter:${letter.id}`, {
            projection: letter.projection,
            partition: letter.partition,
            streamSeq: letter.streamSeq,
            eventId: letter.eventId,
            reason: letter.reason,
          })
          return letter
        }),
      {
        auth: 'admin:write',
        params: DeadLetterParams,
        response: { 200: DeadLetter, 404: ErrorResponse, 422: ErrorResponse, 503: ErrorResponse, ...denied },
        detail: {
          summary: 'Discard a dead letter',
          description: 'Deletes it and answers what it held (the audit log keeps its place and reason). Its event stays in the stream: a rebuild of the projection runs it again. 404 unknown_dead_letter.',
        },
      },
    )
}
