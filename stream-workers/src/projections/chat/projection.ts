import type { ChatChange } from '../../../../core/channels'
import type { ChatMessageDeleted, ChatMessagePosted } from '../../../../core/events'

/** A chat message as the read model holds it; (room, id) names it. `by`: who posted it (see Caller). */
export type MessageState = {
  id: string
  room: string
  by: string
  user: string
  /** The poster's display name, when the event carried one. */
  name?: string
  text: string
  seq: number
  postedAt: Date
  deleted: boolean
}

/** A chat event with what the projection needs from its envelope. */
export type ChatEvent =
  | { type: 'chat.message.posted'; id: string; by: string; data: ChatMessagePosted; seq: number; postedAt: Date }
  | { type: 'chat.message.deleted'; data: ChatMessageDeleted }

/**
 * What an event does to its message: the message after it with the change to announce; null when
 * nothing changes; or `refused` with why, for an event that can never apply (dead-lettered).
 */
export type Evolved = { next: MessageState; change: ChatChange } | { refused: string } | null

/**
 * The message after an event:
 * - posted: creates the message. If the room already holds that id, the same publisher (`by`)
 *   posting it again is a resend past the de-duplication window: no change. Another publisher
 *   posting it is a collision (ids are only unique per publisher): the first message is kept and
 *   the second is refused, so it is recorded as a dead letter instead of vanishing.
 * - deleted: marks an existing, not yet deleted message of the same room as deleted; an unknown
 *   message, one of another room or one already deleted is no change.
 * `current` is the message the event refers to (the posted id, or the deleted messageId, in the
 * event's room).
 */
export function evolveMessage(current: MessageState | undefined, event: ChatEvent): Evolved {
  switch (event.type) {
    case 'chat.message.posted': {
      if (current) {
        if (current.by === event.by) return null
        return { refused: `message id ${JSON.stringify(event.id)} is already used in room ${JSON.stringify(current.room)} by another publisher` }
      }
      const next: MessageState = {
        id: event.id,
        room: event.data.room,
        by: event.by,
        user: event.data.user,
        ...(event.data.name ? { name: event.data.name } : {}),
        text: event.data.text,
        seq: event.seq,
        postedAt: event.postedAt,
        deleted: false,
      }
      return {
        next,
        change: {
          kind: 'posted',
          message: { id: next.id, room: next.room, user: next.user, ...(next.name ? { name: next.name } : {}), text: next.text, postedAt: next.postedAt.toISOString() },
        },
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
