import { Elysia } from 'elysia'
import type { Db } from '../../../../core/db/client'
import { ErrorResponse } from '../../error-model'
import { MessagesQuery, RoomMessages, RoomParams } from './model'
import { roomMessages } from './service'

/** Public chat history reads. */
export function roomsModule(db: Db) {
  return new Elysia({ prefix: '/v1/rooms' }).get(
    '/:room/messages',
    ({ params, query }) => roomMessages(db, params.room, query),
    {
      params: RoomParams,
      query: MessagesQuery,
      response: { 200: RoomMessages, 404: ErrorResponse, 422: ErrorResponse },
      detail: {
        tags: ['rooms'],
        summary: 'Chat history of a room',
        description: 'Newest first. `before=<messageId>` pages to older messages; an unknown id is 404 message_not_found.',
      },
    },
  )
}
