import { DeliverPolicy, jetstream, jetstreamManager } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import { noticesOf, parseChannel, type ChangeNotice, type ChangeRun, type ChannelKind } from '../../../core/channels'
import { subjects } from '../../../core/events'

/** Reads the change notices of one channel still kept in the change stream, newer than `after`. */
export type HistoryReader = (channel: string, after: number) => Promise<ChangeNotice[]>

/**
 * Reads a channel's history from its kind's change stream (one subject per channel, so one ordered
 * consumer with a single filter subject: fine on nats-server 2.9). The stream keeps the last
 * change runs per channel as configured for its kind (see historyRetention), shared by every API
 * node.
 *
 * Returns notices in stream order (not necessarily version order: two workers may publish one
 * channel's versions in either order); the caller sorts and checks contiguity.
 */
export function historyReader(deps: { nc: NatsConnection; streams: Record<ChannelKind, string>; prefix: string; timeoutMs?: number }): HistoryReader {
  const js = jetstream(deps.nc)
  const jsm = jetstreamManager(deps.nc, { checkAPI: false })
  const timeoutMs = deps.timeoutMs ?? 5_000
  return async (channel, after) => {
    const subject = subjects.change(deps.prefix, channel)
    const parsed = parseChannel(channel)
    if (!parsed) throw new Error(`not a channel: ${channel}`)
    const stream = deps.streams[parsed.kind]
    // The last stored sequence bounds the read: the consumer stops there instead of waiting for more.
    const last = await (await jsm).streams.getMessage(stream, { last_by_subj: subject })
    if (!last) return []
    const consumer = await js.consumers.get(stream, { filter_subjects: subject, deliver_policy: DeliverPolicy.All })
    // Deleted however the read ends (a timeout included): an ephemeral consumer left behind costs
    // the server until its inactivity threshold, and a reconnect storm would leave thousands.
    try {
      const out: ChangeNotice[] = []
      const deadline = Date.now() + timeoutMs
      for (;;) {
        if (Date.now() > deadline) throw new Error(`reading the history of ${channel} timed out`)
        let reached = false
        const batch = await consumer.fetch({ max_messages: 1000, expires: Math.max(1_000, deadline - Date.now()) })
        for await (const m of batch) {
          for (const n of noticesOf(m.json<ChangeRun>())) if (n.version > after) out.push(n)
          if (m.seq >= last.seq) {
            reached = true
            break
          }
        }
        if (reached) break
      }
      return out
    } finally {
      await consumer.delete().catch(() => {})
    }
  }
}
