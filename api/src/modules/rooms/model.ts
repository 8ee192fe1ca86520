import { t } from 'elysia'
import { EventId, Name } from '../../../../core/events'
import { integerParam } from '../../params'

export const RoomParams = t.Object({ room: Name })
export const MessagesQuery = t.Object({
  before: t.Optional(EventId),
  limit: integerParam('limit', { minimum: 1, maximum: 100, default: 50 }),
})

export const Message = t.Object({
  id: t.String(),
  user: t.String(),
  name: t.Optional(t.String({ description: "the poster's display name, from their token" })),
  text: t.String(),
  postedAt: t.String({ description: 'ISO 8601' }),
})
export type Message = typeof Message.static

export const RoomMessages = t.Object({
  room: t.String(),
  messages: t.Array(Message, { description: 'newest first; deleted messages are absent' }),
})
export type RoomMessages = typeof RoomMessages.static
