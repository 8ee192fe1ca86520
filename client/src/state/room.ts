import type { ChannelSnapshots, ChannelUpdates } from '../protocol'
import { RESYNC, type StateHelper } from './helper'

export type RoomState = ChannelSnapshots['chat']

/**
 * Chat rooms: the latest `limit` messages, newest first. A deleted message leaves a full list one
 * short, and only the server knows the message that moves up into it: that asks for a snapshot.
 */
export const room: StateHelper<RoomState, ChannelUpdates['chat']> = {
  apply(state, u) {
    switch (u.kind) {
      case 'posted': {
        if (state.messages.some((m) => m.id === u.message.id)) return state
        // Changes of a room are committed in stream order, the order the snapshot lists.
        const { room: _, ...message } = u.message
        return { ...state, messages: [message, ...state.messages].slice(0, state.limit) }
      }
      case 'deleted': {
        const messages = state.messages.filter((m) => m.id !== u.messageId)
        if (messages.length === state.messages.length) return state
        return state.messages.length >= state.limit ? RESYNC : { ...state, messages }
      }
      default: {
        const never: never = u
        throw new Error(`unknown room change ${JSON.stringify(never)}`)
      }
    }
  },
}
