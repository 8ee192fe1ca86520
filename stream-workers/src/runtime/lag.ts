import type { SubscriptionWatch } from '../../../core/nats-subscriptions'
import { lagSubject, type LagReply, type RunnerLag } from '../../../core/projection-lag'

/**
 * Answers GET /admin/projections' lag queries (see askLags) for this worker process: one
 * subscription, every process answers with the lag of each runner it has now, as the runners know
 * it (no consumer info: see core/projection-lag.ts). Not essential: denied, the API shows this
 * worker's partitions' lag as unknown (null), and the watch says so.
 */
export function answerLagQueries(deps: { subscriptions: SubscriptionWatch; prefix: string; workerId: string; runners: () => RunnerLag[] }): { stop: () => void } {
  const sub = deps.subscriptions.subscribe(lagSubject(deps.prefix), {
    name: 'projection_lag',
    essential: false,
    // Answered on the next turn of the event loop: a delivery read from the socket with the query
    // reaches its runner first (nats.js hands both over in one synchronous parse).
    onMessage: (msg) => void setTimeout(() => msg.respond(JSON.stringify({ worker: deps.workerId, runners: deps.runners() } satisfies LagReply)), 0),
  })
  return { stop: () => sub.unsubscribe() }
}
