import type { NatsConnection } from '@nats-io/transport-node'
import type { Logger } from '../../../../core/logger'
import type { SubscriptionWatch } from '../../../../core/nats-subscriptions'
import { Unavailable } from '../../errors'
import type { ChannelLoad, NodeStats } from './model'

/** `<prefix>.admin.nodes` (core NATS): every API node answers with its NodeStats. */
export const nodesSubject = (prefix: string) => `${prefix}.admin.nodes`

/** Channels each node reports, and the cluster-wide list keeps: the busiest, by subscribers. */
export const BUSIEST = 10

/**
 * Makes this API node answer `GET /admin/nodes` queries from any node: its connection, subscription
 * and channel counts, read from its own state when asked (nothing is stored anywhere).
 */
export function answerNodeQueries(deps: { subscriptions: SubscriptionWatch; prefix: string; stats: () => NodeStats }): { stop: () => void } {
  // Denied, this node would be missing from GET /admin/nodes without a word: the watch says so.
  const sub = deps.subscriptions.subscribe(nodesSubject(deps.prefix), {
    name: 'node_stats',
    onMessage: (msg) => void msg.respond(JSON.stringify(deps.stats())),
  })
  return { stop: () => sub.unsubscribe() }
}

/**
 * Asks every API node for its stats (scatter-gather over core NATS): the answer is complete once
 * no node has answered for `stallMs` (a node answers within a few ms; at most `maxWaitMs` in all).
 * Nodes by id, and the busiest channels cluster-wide (subscribers summed over nodes).
 */
export function createNodesReader(deps: { nc: NatsConnection; prefix: string; stallMs?: number; maxWaitMs?: number }) {
  return async (): Promise<{ nodes: NodeStats[]; busiest: ChannelLoad[] }> => {
    const nodes: NodeStats[] = []
    try {
      const replies = await deps.nc.requestMany(nodesSubject(deps.prefix), '', { strategy: 'stall', stall: deps.stallMs ?? 250, maxWait: deps.maxWaitMs ?? 2_000 })
      for await (const m of replies) nodes.push(m.json<NodeStats>())
    } catch (err) {
      throw new Unavailable(`cannot ask the API nodes: ${(err as Error).message}`)
    }
    nodes.sort((a, b) => a.id.localeCompare(b.id))
    return { nodes, busiest: busiestOf(nodes.flatMap((n) => n.busiest)) }
  }
}

/** Sums subscribers per channel and keeps the BUSIEST most watched (ties by name). */
export function busiestOf(loads: ChannelLoad[], limit = BUSIEST): ChannelLoad[] {
  const total = new Map<string, number>()
  for (const l of loads) total.set(l.channel, (total.get(l.channel) ?? 0) + l.subscribers)
  return [...total]
    .map(([channel, subscribers]) => ({ channel, subscribers }))
    .sort((a, b) => b.subscribers - a.subscribers || a.channel.localeCompare(b.channel))
    .slice(0, limit)
}
