import { Type, type Static } from '@sinclair/typebox'
import { ActorId, ChatText, DisplayName, EventId, Name } from './fields'

/**
 * A chat message; its id is the event's id. Key: room. `user` and `name` are stamped by the API
 * from a user's token (a user cannot post as another); a key posting for a user gives them.
 */
export const ChatMessagePosted = Type.Object(
  { room: Name, user: ActorId, name: Type.Optional(DisplayName), text: ChatText },
  { additionalProperties: false, $id: 'chat.message.posted@1' },
)
export type ChatMessagePosted = Static<typeof ChatMessagePosted>

/** Removal of a chat message (admins, keys with admin:write, moderators). Key: room. */
export const ChatMessageDeleted = Type.Object(
  { room: Name, messageId: EventId },
  { additionalProperties: false, $id: 'chat.message.deleted@1' },
)
export type ChatMessageDeleted = Static<typeof ChatMessageDeleted>
