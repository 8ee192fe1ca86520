/**
 * The server's own contracts, as types only: the SDK has no copy of a schema and no runtime
 * dependency. A change of a frame or a channel's data on the server breaks this package's type
 * check, not its users at run time.
 */
export type { ServerFrame, ChannelSnapshots, ChannelUpdates } from '../../api/src/realtime/protocol'
export type { PublishedEvent } from '../../core/events'
export type { ChannelKind } from '../../core/channels'

import type { ChannelSnapshots } from '../../api/src/realtime/protocol'

/** The kinds of channel a client may subscribe to: the read models' and `presence`. */
export type Kind = keyof ChannelSnapshots

/** The kind a channel name starts with (`presence:chat:lobby` is a presence channel). */
export type KindOf<C extends string> = C extends `${infer K}:${string}` ? (K extends Kind ? K : never) : never
