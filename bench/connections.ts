/**
 * (4) Connections: memory per idle WebSocket (RSS delta of the server process / connections) and
 * the time to accept them, Fanfare's API node against bare Bun.serve. 19,000 connections, as many
 * as one node takes here (a process may hold 20,000 open files): the clients run in two processes
 * of their own; the server's RSS is read from /proc.
 */
import { freePort } from '../core/process'
import { rssOf, startChild } from './lib/child'
import { startClientPool } from './lib/client-pool'
import { BUN, pick, type BenchContext } from './lib/context'
import { deploy } from './lib/fanfare'
import type { Figure } from './lib/report'

async function idle(ctx: BenchContext, kind: 'fanfare' | 'bun', url: string, pid: number, n: number) {
  await Bun.sleep(200) // let start-up allocation settle before the "before" reading
  const before = rssOf(pid)
  const clients = startClientPool({ kind, url, n, channels: [], wave: 500 }, 2)
  try {
    const ready = await clients.ready(180_000)
    // Give the server a moment to finish its side of the last handshakes, then read.
    await Bun.sleep(300)
    const after = rssOf(pid)
    const perConn = (after - before) / n
    ctx.log(`  ${kind}: ${n} idle sockets in ${ready.openMs.toFixed(0)} ms, ${(perConn / 1024).toFixed(1)} KiB each (RSS ${(before / 2 ** 20).toFixed(0)} → ${(after / 2 ** 20).toFixed(0)} MiB)`)
    return { perConn, openMs: ready.openMs as number }
  } finally {
    await clients.stop()
  }
}

export async function connections(ctx: BenchContext): Promise<Figure[]> {
  const n = pick(ctx, 50, 19_000)
  ctx.log(`connections: ${n} idle WebSockets`)
  const d = await deploy()
  const bun = startChild([BUN, 'bench/servers/bare-bun.ts'], { port: freePort() })
  try {
    const api = await d.startApi()
    const bunPort = (await bun.next(30_000)).port
    const f = await idle(ctx, 'fanfare', `ws://127.0.0.1:${api.port}/v1/ws`, api.proc.proc.pid, n)
    const b = await idle(ctx, 'bun', `ws://127.0.0.1:${bunPort}/`, bun.proc.pid, n)
    const base = { group: 'connections', baselineName: 'bare Bun.serve' }
    const figures: Figure[] = [{ ...base, name: `time to accept ${n} WebSockets`, unit: 'ms', value: f.openMs, baseline: b.openMs }]
    // Not in smoke mode: 50 connections' memory is within the RSS noise (a collection meanwhile
    // made it -901 B per connection once).
    if (ctx.mode === 'full') {
      figures.unshift({ ...base, name: `memory per idle WebSocket at ${n} connections`, unit: 'B', value: f.perConn, baseline: b.perConn, target: { op: '<=', value: 4096 } })
    }
    return figures
  } finally {
    await bun.stop()
    await d.close()
  }
}
