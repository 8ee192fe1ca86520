import { DeliverPolicy, jetstream, jetstreamManager, type ConsumerMessages } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import { noticesOf, type ChangeNotice, type ChangeRun } from '../../../core/channels'
import type { Logger } from '../../../core/logger'
import { backoffMs, sleep } from '../../../core/backoff'
import { streamIdentity } from '../../../core/nats'

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
 *
 * If the stream itself is recreated (NATS lost its data), its sequences restart at 1 and the
 * ordered consumer would wait past every new notice: the feed notices the stream's new identity
 * when its consumer is re-created, starts over on the new stream, and calls `onRestart` (notices
 * may have been lost in between: the hub re-syncs its subscribers). The same if the consumer gives
 * up for any other reason.
 */
export async function startChangeFeed(deps: {
  nc: NatsConnection
  stream: string
  logger: Logger
  onNotice: (notice: ChangeNotice) => void
  onRestart: () => void
  lookBackMs?: number
}): Promise<ChangeFeed> {
  const js = jetstream(deps.nc)
  const jsm = await jetstreamManager(deps.nc)
  const log = deps.logger.child({ stream: deps.stream })
  let stopped = false
  const stopping = new AbortController()
  let messages: ConsumerMessages | undefined

  const follow = async (from: { startTime: Date } | { afterSeq: number }) => {
    const consumer = await js.consumers.get(
      deps.stream,
      'afterSeq' in from
        ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: from.afterSeq + 1 }
        : { deliver_policy: DeliverPolicy.StartTime, opt_start_time: from.startTime.toISOString() },
    )
    // A wide pull window: the default (100) sends a pull request every ~50 runs, a socket write each,
    // a large share of an API node's CPU when many channels each change often.
    return consumer.consume({ max_messages: 1000 })
  }

  // The stream incarnation the current consumer reads, and the last sequence it delivered.
  let identity = await streamIdentity(jsm, deps.stream)
  let lastSeq = 0
  messages = await follow({ startTime: new Date(Date.now() - (deps.lookBackMs ?? 10_000)) })

  /**
   * Stops the current consumer when its stream may have gone: its consumer was deleted (it goes
   * with its stream), or it re-created itself on a stream with another identity. The loop below
   * then starts over on the stream as it is now.
   */
  const watch = async (current: ConsumerMessages) => {
    for await (const s of current.status()) {
      if (s.type === 'consumer_deleted' || s.type === 'stream_not_found') {
        log.warn({ status: s.type }, 'change feed consumer lost; starting over')
        current.stop()
      } else if (s.type === 'ordered_consumer_recreated' && (await streamIdentity(jsm, deps.stream).catch(() => identity)) !== identity) {
        current.stop()
      }
    }
  }

  const done = (async () => {
    for (let attempt = 0; !stopped; ) {
      const current = messages!
      void watch(current).catch(() => {})
      try {
        for await (const m of current) {
          attempt = 0
          lastSeq = m.seq
          let notices: ChangeNotice[]
          try {
            notices = noticesOf(m.json<ChangeRun>())
          } catch (err) {
            log.error({ err, subject: m.subject, seq: m.seq }, 'unreadable change run')
            continue
          }
          for (const n of notices) deps.onNotice(n)
        }
      } catch (err) {
        if (!stopped) log.warn({ err }, 'change feed consumer failed')
      }
      if (stopped) break
      // Not stopped by us: the stream was recreated, or the consumer gave up. Go on after the last
      // notice seen (a new stream: from its start) and let the hub re-sync whatever may have been
      // missed meanwhile.
      await sleep(backoffMs(attempt++), stopping.signal)
      if (stopped) break
      try {
        const now = await streamIdentity(jsm, deps.stream)
        if (now !== identity) {
          log.error({ was: identity, now }, 'the change stream was recreated (NATS lost its data?): following the new one, re-syncing subscribers')
          lastSeq = 0
        }
        identity = now
        messages = await follow({ afterSeq: lastSeq })
        // Stopped while the consumer was being created: stop() closed the previous one.
        if (stopped) {
          await messages.close()
          break
        }
        deps.onRestart()
      } catch (err) {
        log.warn({ err }, 'change feed could not restart; retrying')
      }
    }
  })()

  return {
    stop: async () => {
      stopped = true
      stopping.abort()
      await messages?.close()
      await done
    },
  }
}
