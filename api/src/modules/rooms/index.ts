import { Elysia } from 'elysia'
import type { Db } from '../../../../core/db/client'
import { channelOf } from '../../../../core/channels'
import { maySubscribe } from '../../auth/permissions'
import type { AuthPlugin } from '../../auth/plugin'
import type { RoomAccess } from '../../auth/rooms'
import { ErrorResponse } from '../../error-model'
import { Forbidden } from '../../errors'
import { MessagesQuery, RoomMessages, RoomParams } from './model'
import { roomMessages } from './service'

/** Chat history reads: public rooms for anyone allowed to connect, private ones as their channel. */
export function roomsModule(deps: { db: Db; auth: AuthPlugin; rooms: RoomAccess }) {
  return new Elysia({ prefix: '/v1/rooms' }).use(deps.auth).get(
    '/:room/messages',
    async ({ params, query, principal }) => {
      const access = maySubscribe(principal, channelOf.chat(params.room), await deps.rooms.visibility(params.room))
      if (!access.ok) throw new Forbidden(access.reason, { channel: channelOf.chat(params.room) })
      return roomMessages(deps.db, params.room, query)
    },
    {
      auth: 'viewer',
      params: RoomParams,
      query: MessagesQuery,
      response: { 200: RoomMessages, 401: ErrorResponse, 403: ErrorResponse, 404: ErrorResponse, 422: ErrorResponse },
      detail: {
        tags: ['rooms'],
        summary: 'Chat history of a room',
        description: 'Newest first. `before=<messageId>` pages to older messages; an unknown id is 404 message_not_found.',
      },
    },
  )
}
