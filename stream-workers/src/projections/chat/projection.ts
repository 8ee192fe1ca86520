import type { ChatChange } from '../../../../core/channels'
import type { ChatMessageDeleted, ChatMessagePosted } from '../../../../core/events'

/** A chat message as the read model holds it. */
export type MessageState = {
  id: string
  room: string
  user: string
  text: string
  seq: number
  postedAt: Date
  deleted: boolean
}

/** A chat event with what the projection needs from its envelope. */
export type ChatEvent =
  | { type: 'chat.message.posted'; id: string; data: ChatMessagePosted; seq: number; postedAt: Date }
  | { type: 'chat.message.deleted'; data: ChatMessageDeleted }

/**
 * The message after an event, with the change to announce, or null when nothing changes:
 * - posted: creates the message; a message id that already exists is no change (a resent event);
 * - deleted: marks an existing, not yet deleted message of the same room as deleted; an unknown
 *   message, one of another room or one already deleted is no change.
 * `current` is the message the event refers to (the posted id, or the deleted messageId).
 */
export function evolveMessage(current: MessageState | undefined, event: ChatEvent): { next: MessageState; change: ChatChange } | null {
  switch (event.type) {
    case 'chat.message.posted': {
      if (current) return null
      const next: MessageState = {
        id: event.id,
        room: event.data.room,
        user: event.data.user,
        text: event.data.text,
        seq: event.seq,
        postedAt: event.postedAt,
        deleted: false,
      }
      return {
        next,
        change: { kind: 'posted', message: { id: next.id, room: next.room, user: next.user, text: next.text, postedAt: next.postedAt.toISOString() } },
      }
    }
    case 'chat.message.deleted': {
      if (!current || current.deleted || current.room !== event.data.room) return null
      return { next: { ...current, deleted: true }, change: { kind: 'deleted', messageId: current.id } }
    }
    default: {
      const never: never = event
      throw new Error(`unknown chat event ${JSON.stringify(never)}`)
    }
  }
}
