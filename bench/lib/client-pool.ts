import { startChild, type Child } from './child'
import { BUN } from './context'
import { summarize } from './stats'
import type { ClientsConfig } from '../clients/ws-clients'

/**
 * Load clients spread over several processes (bench/clients/ws-clients.ts each): one process may
 * hold at most `ulimit -n` sockets (20,000 on these machines), and one client process would also be
 * the bottleneck of a large fan-out. Client i (over all processes) subscribes to
 * channels[i % channels.length] and signs in as `bench-<i>`, as with a single process.
 */
export type ClientPool = {
  /** Waits until every process has opened (and subscribed) its clients; `openMs` is the slowest's. */
  ready: (timeoutMs?: number) => Promise<{ count: number; openMs: number }>
  /** Updates received since the last reset, over all processes (latencies merged when `latencies`). */
  report: (latencies?: boolean) => Promise<{ count: number; first: number; last: number; p50: number; p99: number; max: number }>
  reset: () => Promise<void>
  close: () => Promise<void>
  stop: () => Promise<void>
}

export function startClientPool(cfg: ClientsConfig, processes: number): ClientPool {
  const per = Math.ceil(cfg.n / processes)
  const children: Child[] = []
  for (let p = 0, offset = 0; offset < cfg.n; p++, offset += per) {
    const n = Math.min(per, cfg.n - offset)
    children.push(startChild([BUN, 'bench/clients/ws-clients.ts'], { ...cfg, n, offset, firstUser: (cfg.firstUser ?? 0) + offset } satisfies ClientsConfig))
  }
  const all = <T>(f: (c: Child) => Promise<T>) => Promise.all(children.map(f))
  return {
    ready: async (timeoutMs = 180_000) => {
      const r = await all((c) => c.next(timeoutMs))
      return { count: r.reduce((s, x) => s + x.count, 0), openMs: Math.max(...r.map((x) => x.openMs)) }
    },
    report: async (latencies = false) => {
      const r = await all((c) => c.ask({ cmd: 'report', latencies }))
      const got = r.filter((x) => x.count > 0)
      const merged = latencies ? summarize(r.flatMap((x) => x.latencies ?? [])) : { p50: Number.NaN, p99: Number.NaN, max: Number.NaN }
      return {
        ...merged,
        count: r.reduce((s, x) => s + x.count, 0),
        first: got.length ? Math.min(...got.map((x) => x.first)) : 0,
        last: got.length ? Math.max(...got.map((x) => x.last)) : 0,
      }
    },
    reset: async () => void (await all((c) => c.ask({ cmd: 'reset' }))),
    close: async () => void (await all((c) => c.ask({ cmd: 'close' }).catch(() => {}))),
    stop: async () => void (await all((c) => c.stop())),
  }
}
