/**
 * (8) Presence: N WebSocket clients (a user JWT each) join a channel spread over two API nodes,
 * then leave; a `presence:` watcher on each node. Figures: how long after the last join every
 * node's counts are right (target: at most 2 s), the same after everyone left, and the API nodes'
 * CPU per join against the same joins to a channel without presence (a board), in the same run.
 */
import { until } from '../core/testing/wait'
import { WsClient } from '../test/e2e/harness'
import { cpuOf, startChild, type Child } from './lib/child'
import { BUN, pick, type BenchContext } from './lib/context'
import { deploy } from './lib/fanfare'
import type { Figure } from './lib/report'
import type { ClientsConfig } from './clients/ws-clients'

type Node = { port: number; pid: number }

/** Opens n clients over the nodes (half each), subscribed to `channel`; resolves when all are subscribed. */
async function join(nodes: Node[], n: number, channel: string, jwtSecret: string): Promise<Child[]> {
  const each = n / nodes.length
  const clients = nodes.map((node, i) =>
    startChild([BUN, 'bench/clients/ws-clients.ts'], {
      kind: 'fanfare',
      url: `ws://127.0.0.1:${node.port}/v1/ws`,
      n: each,
      channels: [channel],
      wave: 250,
      jwtSecret,
      firstUser: i * each,
    } satisfies ClientsConfig),
  )
  await Promise.all(clients.map((c) => c.next(300_000)))
  return clients
}

const cpu = (nodes: Node[]) => nodes.reduce((s, n) => s + cpuOf(n.pid), 0)

/** The watcher's latest counts (snapshot or update). */
function counts(w: WsClient, channel: string) {
  const last = w.frames.filter((f) => f.channel === channel && (f.op === 'snapshot' || f.op === 'update')).at(-1)
  return last ? { connections: last.data.connections as number, users: last.data.users as number } : undefined
}

export async function presence(ctx: BenchContext): Promise<Figure[]> {
  const n = pick(ctx, 100, 10_000)
  // No grace: a closed connection leaves at once, so the leave phase measures the cluster, not the grace.
  const d = await deploy({ FANFARE_PRESENCE_GRACE_MS: '0' })
  const opened: WsClient[] = []
  try {
    const nodes: Node[] = []
    for (let i = 0; i < 2; i++) {
      const api = await d.startApi()
      nodes.push({ port: api.port, pid: api.proc.proc.pid })
    }
    const secret = d.env.vars.FANFARE_JWT_SECRET
    const channel = 'chat:pbench'
    const watched = `presence:${channel}`
    const watchers = await Promise.all(nodes.map((node) => WsClient.open(`ws://127.0.0.1:${node.port}/v1/ws`)))
    opened.push(...watchers)
    for (const w of watchers) w.send({ op: 'subscribe', channel: watched })
    await until('watchers subscribed', () => watchers.every((w) => counts(w, watched)), 10_000)

    ctx.log(`presence: ${n} clients to a board (no presence), then to a room with presence, over 2 nodes`)
    let before = cpu(nodes)
    let t = performance.now()
    const baseClients = await join(nodes, n, 'leaderboard:pbase', secret)
    const baseMs = performance.now() - t
    const baseCpu = cpu(nodes) - before
    await Promise.all(baseClients.map(async (c) => (await c.ask({ cmd: 'close' }).catch(() => {}), c.stop())))
    await Bun.sleep(500)

    before = cpu(nodes)
    t = performance.now()
    const clients = await join(nodes, n, channel, secret)
    const joined = performance.now()
    await until('counts converge after the joins', () => watchers.every((w) => counts(w, watched)?.connections === n && counts(w, watched)?.users === n), 30_000, 5)
    const convergeMs = performance.now() - joined
    const joinMs = joined - t
    const presenceCpu = cpu(nodes) - before
    ctx.log(`  joins: ${joinMs.toFixed(0)} ms (board: ${baseMs.toFixed(0)} ms); counts right on both nodes ${convergeMs.toFixed(0)} ms after the last join`)

    const left = performance.now()
    await Promise.all(clients.map(async (c) => (await c.ask({ cmd: 'close' }).catch(() => {}), c.stop())))
    await until('counts converge after the leaves', () => watchers.every((w) => counts(w, watched)?.connections === 0), 30_000, 5)
    const leaveMs = performance.now() - left
    ctx.log(`  leaves: counts back to 0 on both nodes ${leaveMs.toFixed(0)} ms after the clients closed`)
    ctx.notes.push(
      `presence: ${n} joins over 2 nodes converged ${convergeMs.toFixed(0)} ms after the last join (target <= 2000 ms: ${convergeMs <= 2000 ? 'met' : 'missed'}); ` +
        `everyone gone ${leaveMs.toFixed(0)} ms after closing (includes closing ${n} sockets)`,
    )
    const base = { group: 'presence' }
    const figures: Figure[] = [
      { ...base, name: `time until every node counts ${n} joins right (after the last join)`, unit: 'ms', value: convergeMs, baselineName: `the ${n} joins themselves (board, no presence)`, baseline: baseMs },
    ]
    // Not in smoke mode: /proc counts CPU in 10 ms ticks, and a tiny load may cost none.
    if (ctx.mode === 'full') {
      figures.push({ ...base, name: `API CPU per join with presence, ${n} users over 2 nodes`, unit: 'µs', value: (presenceCpu / n) * 1e6, baselineName: 'per join to a board (no presence)', baseline: (baseCpu / n) * 1e6 })
    }
    return figures
  } finally {
    for (const w of opened) w.close()
    await d.close()
  }
}
