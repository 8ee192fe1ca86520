import { AckPolicy, DeliverPolicy, type JetStreamManager } from '@nats-io/jetstream'
import { nanos, type NatsConnection } from '@nats-io/transport-node'
import { consumerName, parseConsumerName } from '../../../core/projections'
import { consumerNames } from '../../../core/consumer-names'

/** How long the server waits for an ack before redelivering; runners extend it while retrying. */
export const ACK_WAIT_MS = 30_000

/**
 * Creates the durable pull consumer of one ownership, starting right after `checkpoint`, after
 * deleting the consumers of older ownerships of the same projection and partition (and an earlier
 * one of this ownership, so the new one starts clean at delivery sequence 1). A stale owner can
 * therefore never pull from the new consumer, and a newer owner's consumer is never touched.
 * Returns its name and `pending`, the events on its filter after the checkpoint, which the server
 * counted to create it (no request of its own: see the runner's lag).
 */
export async function createOwnershipConsumer(
  nc: NatsConnection,
  jsm: JetStreamManager,
  opts: { stream: string; projection: string; partition: number; token: number; filter: string; checkpoint: number; batchSize: number },
): Promise<{ name: string; pending: number }> {
  const name = consumerName(opts.projection, opts.partition, opts.token)
  for (const existing of await consumerNames(nc, jsm, opts.stream)) {
    const other = parseConsumerName(existing)
    if (other && other.projection === opts.projection && other.partition === opts.partition && other.token <= opts.token) {
      await jsm.consumers.delete(opts.stream, existing).catch((err) => {
        if (!/not found/i.test(String(err))) throw err
      })
    }
  }
  const created = await jsm.consumers.add(opts.stream, {
    durable_name: name,
    filter_subject: opts.filter,
    ...(opts.checkpoint > 0
      ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: opts.checkpoint + 1 }
      : { deliver_policy: DeliverPolicy.All }),
    // The runner applies deliveries strictly in order, so one ack per batch (its last) is enough.
    ack_policy: AckPolicy.All,
    ack_wait: nanos(ACK_WAIT_MS),
    max_deliver: -1,
    max_ack_pending: Math.max(1000, opts.batchSize * 2),
    // A consumer whose owner vanished without a successor is removed eventually.
    inactive_threshold: nanos(3600_000),
  })
  return { name, pending: created.num_pending }
}

// Moved to core (the API lists consumer names too, see projectionStatus); kept importable from here.
export { consumerNames } from '../../../core/consumer-names'
