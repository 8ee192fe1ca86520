import { DeliverPolicy, jetstream } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import { noticesOf, type ChangeNotice, type ChangeRun } from '../../../core/channels'
import type { Logger } from '../../../core/logger'

export type ChangeFeed = { stop: () => Promise<void> }

/**
 * Follows the change stream with an ordered consumer (it re-creates itself after a NATS restart
 * from the last sequence it saw, so it never skips) and hands every notice of every change run to
 * `onNotice`, in order.
 *
 * It starts a few seconds in the past rather than at "new": a subscriber's snapshot can only be
 * joined with notices this node receives, and starting back in time closes the window between this
 * node starting and its consumer existing. Older notices are dropped by the hub (their channels
 * have no subscribers yet).
 */
export async function startChangeFeed(deps: {
  nc: NatsConnection
  stream: string
  logger: Logger
  onNotice: (notice: ChangeNotice) => void
  lookBackMs?: number
}): Promise<ChangeFeed> {
  const js = jetstream(deps.nc)
  const consumer = await js.consumers.get(deps.stream, {
    deliver_policy: DeliverPolicy.StartTime,
    opt_start_time: new Date(Date.now() - (deps.lookBackMs ?? 10_000)).toISOString(),
  })
  // A wide pull window: the default (100) sends a pull request every ~50 runs, a socket write each,
  // a large share of an API node's CPU when many channels each change often.
  const messages = await consumer.consume({ max_messages: 1000 })
  const done = (async () => {
    for await (const m of messages) {
      let notices: ChangeNotice[]
      try {
        notices = noticesOf(m.json<ChangeRun>())
      } catch (err) {
        deps.logger.error({ err, subject: m.subject, seq: m.seq }, 'unreadable change run')
        continue
      }
      for (const n of notices) deps.onNotice(n)
    }
  })()
  return {
    stop: async () => {
      await messages.close()
      await done
    },
  }
}
