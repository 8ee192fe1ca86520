import type { AckedPublisher } from '../../../../core/acked-publish'
import { contracts, dedupIdOf, keyOf, partitionOf, subjects, type ReactionSent, type StoredEvent } from '../../../../core/events'
import type { PublishResult } from './model'

/** A validated `reaction.sent` as ingest hands it over: its id, its publisher, its data. */
export type AcceptedReaction = { id: string; by: string; data: ReactionSent }

/**
 * Stores accepted reactions in batches: one `reaction.batched` JetStream message per stream for the
 * reactions that arrived together, instead of one message per reaction.
 */
export type ReactionBatcher = {
  /**
   * Resolves once JetStream stored the message holding the reaction (`seq` is that message's), or
   * rejects with the publish's error: nothing is acknowledged before it is stored. `duplicate` is
   * always false: a resent reaction is stored again, and the reactions projection counts it once
   * (see ReactionsBatched).
   */
  add(reaction: AcceptedReaction): Promise<PublishResult>
}

/** Most reactions in one message: about 350 bytes each at worst, so well under NATS' 1 MB. */
export const MAX_REACTIONS_PER_MESSAGE = 250
/** Messages of one stream being stored at once, per node. */
const MAX_IN_FLIGHT = 4

type Waiting = { reaction: AcceptedReaction; resolve: (r: PublishResult) => void; reject: (err: unknown) => void }
type Queue = { waiting: Waiting[]; publishing: number; scheduled: boolean }

/**
 * Batches per stream: the reactions of a stream accepted in one event-loop turn leave together at
 * its end, and while MAX_IN_FLIGHT messages of the stream are being stored the next ones wait and
 * join the message after, so batches grow with the load by themselves (one reaction alone leaves
 * at the end of its turn, as it would unbatched). A node's messages go out on one connection in
 * the order they were made, so JetStream stores a stream's reactions in the order they were accepted.
 */
export function createReactionBatcher(deps: {
  /** Stores the messages; its timeout bounds each one's wait for JetStream's acknowledgement. */
  publisher: AckedPublisher
  prefix: string
  partitions: number
  eventStream: string
  /** Carried in each message: the window within which the projection treats a repeated (stream, by, id) as a resend. */
  dedupWindowMs: number
  now: () => Date
  newId: () => string
}): ReactionBatcher {
  const queues = new Map<string, Queue>()
  const version = contracts['reaction.batched'].version

  function schedule(stream: string, q: Queue) {
    if (q.publishing >= MAX_IN_FLIGHT || q.scheduled || q.waiting.length === 0) return
    q.scheduled = true
    setImmediate(() => {
      q.scheduled = false
      while (q.waiting.length > 0 && q.publishing < MAX_IN_FLIGHT) void publish(stream, q, q.waiting.splice(0, MAX_REACTIONS_PER_MESSAGE))
    })
  }

  async function publish(stream: string, q: Queue, batch: Waiting[]) {
    q.publishing++
    try {
      const event = {
        id: deps.newId(),
        by: 'system',
        type: 'reaction.batched' as const,
        v: version,
        data: { stream, dedupWindowMs: deps.dedupWindowMs, reactions: batch.map(({ reaction: r }) => ({ id: r.id, by: r.by, emoji: r.data.emoji })) },
        at: deps.now().toISOString(),
      } satisfies StoredEvent
      const subject = subjects.event(deps.prefix, partitionOf(keyOf(event), deps.partitions), event.type)
      const { acks, error } = await deps.publisher.publish([{ subject, body: JSON.stringify(event), msgId: dedupIdOf(event) }])
      const ack = acks[0]
      if (!ack) throw error ?? new Error('JetStream did not acknowledge the reactions')
      if (ack.stream !== deps.eventStream) throw new Error(`reactions stored in stream ${ack.stream}, expected ${deps.eventStream}`)
      for (const w of batch) w.resolve({ id: w.reaction.id, seq: ack.seq, duplicate: false })
    } catch (err) {
      for (const w of batch) w.reject(err)
    } finally {
      q.publishing--
      if (q.waiting.length > 0) schedule(stream, q)
      else if (q.publishing === 0 && queues.get(stream) === q) queues.delete(stream)
    }
  }

  return {
    add(reaction) {
      const stream = reaction.data.stream
      let q = queues.get(stream)
      if (!q) queues.set(stream, (q = { waiting: [], publishing: 0, scheduled: false }))
      const queue = q
      return new Promise<PublishResult>((resolve, reject) => {
        queue.waiting.push({ reaction, resolve, reject })
        schedule(stream, queue)
      })
    },
  }
}
