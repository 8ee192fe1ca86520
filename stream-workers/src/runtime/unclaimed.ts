import { claimOf, projectionAreas, UNCLAIMED } from '../../../core/projections'
import { subjects } from '../../../core/events'
import type { JetStreamManager } from '@nats-io/jetstream'
import type { UnclaimedCatch } from '../projections/types'
import type { BatchMessage } from './batch'

/**
 * The catch of messages no projection consumes. JetStream stores whatever is published under
 * `<prefix>.ev.>` (a service with NATS access may publish there past the API), but each projection's
 * consumer takes only `<prefix>.ev.<partition>.<area>.>` of the deployment's partitions: a message on
 * any other subject (an unknown area, a partition out of range, a subject too short) was stored,
 * acknowledged, and seen by no one. nats-server 2.9 has one filter subject per consumer, and
 * "everything but these" is no subject, so this runner's consumer takes the whole stream and skips
 * what a projection claims. It runs with partition 0's runners (under that lease, fenced like them)
 * and writes each unclaimed message as a dead letter of `unclaimed`, partition 0, in its batch's
 * statement with its checkpoint: exactly once through redeliveries and restarts, and beside the
 * projections' consumers, whose events it never holds up. See docs/design.md, "Unclaimed subjects".
 */
export const unclaimedCatch: UnclaimedCatch = { name: UNCLAIMED }

/** The catch's consumer takes every event subject. */
export const unclaimedFilter = (prefix: string) => subjects.allEvents(prefix)

/** Why a message on `subject` is a dead letter of the catch; undefined when a projection consumes it (skipped here). */
export function unclaimedReason(subject: string, partitions: number): string | undefined {
  if (claimOf(subject, partitions)) return undefined
  const areas = Object.values(projectionAreas).join(', ')
  return `no projection consumes subject ${JSON.stringify(subject)}: events are taken on <prefix>.ev.<partition>.<area>.<type> with a partition 0-${partitions - 1} and an area of ${areas}`
}

/**
 * The catch's consumer delivers headers only (its batches are mostly messages it skips, and an
 * event may be hundreds of KB): the bodies of the batch's unclaimed messages, the only ones it
 * keeps, are read from the stream by sequence. A message deleted in between (retention, an
 * operator) is still a dead letter, with an empty payload.
 */
export async function withUnclaimedBodies(jsm: JetStreamManager, stream: string, partitions: number, messages: BatchMessage[]): Promise<BatchMessage[]> {
  const kept = messages.filter((m) => !claimOf(m.subject, partitions))
  if (kept.length === 0) return messages
  const bodies = new Map(await Promise.all(kept.map(async (m) => [m.seq, (await jsm.streams.getMessage(stream, { seq: m.seq }))?.data] as const)))
  return messages.map((m) => {
    const body = bodies.get(m.seq)
    return body ? { ...m, body } : m
  })
}
