/**
 * @fanfare/client: live channels that never lose their place, and publishes stored exactly once.
 *
 * ```ts
 * const client = createClient({ urls: ['https://eu.example.com', 'https://us.example.com'], token: () => auth.fanfareToken() })
 * const board = client.subscribe('leaderboard:arena', { onState: (b) => render(b.entries) })
 * await client.publish({ type: 'chat.message.posted', data: { room: 'lobby', user: 'ann', text: 'gg' } })
 * ```
 */
export { createClient, type Client, type ClientOptions, type CloseReason, type Status, type TokenSource, type Warning } from './client'
export type { StateOf, Subscription, SubscribeOptions, SubscriptionStatus, UpdateOf } from './channels'
export type { Ack } from './outbox'
export { FanfareError } from './errors'
export { helpers, kindOf, RESYNC, type StateHelper } from './state'
export type { ChannelSnapshots, ChannelUpdates, Kind, PublishedEvent, ServerFrame } from './protocol'
