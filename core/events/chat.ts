import { Type, type Static } from '@sinclair/typebox'
import { ActorId, ChatText, EventId, Name } from './fields'

/** A chat message; its id is the event's id. Key: room. */
export const ChatMessagePosted = Type.Object(
  { room: Name, user: ActorId, text: ChatText },
  { additionalProperties: false, $id: 'chat.message.posted@1' },
)
export type ChatMessagePosted = Static<typeof ChatMessagePosted>

/** Removal of a chat message (admins only). Key: room. */
export const ChatMessageDeleted = Type.Object(
  { room: Name, messageId: EventId },
  { additionalProperties: false, $id: 'chat.message.deleted@1' },
)
export type ChatMessageDeleted = Static<typeof ChatMessageDeleted>
