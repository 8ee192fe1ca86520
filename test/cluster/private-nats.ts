import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import type { Subprocess } from 'bun'
import { jetstreamManager } from '@nats-io/jetstream'
import { connect } from '@nats-io/transport-node'
import { freePort } from '../../core/process'
import { until } from '../../core/testing/wait'
import { findNatsServer, waitUntilReady } from '../../scripts/embedded-nats'

/**
 * A nats-server with JetStream that a test can stop and start again on the same port and store
 * directory (scripts/embedded-nats.ts always picks a new port, which a restart test cannot use).
 */
export type PrivateNats = {
  url: string
  /** Starts the server and waits until it accepts connections. */
  start: () => Promise<void>
  /** SIGTERM (a clean JetStream shutdown), SIGKILL after 10 s; resolves once it exited. */
  stop: () => Promise<void>
  /** SIGKILL: the server dies as in a crash (its store recovers on the next start). */
  kill: () => Promise<void>
}

/** A cluster of nats-servers on 127.0.0.1, each with its own client port, route port and store. */
export type PrivateNatsCluster = {
  nodes: PrivateNats[]
  /** Every node's client URL, comma-separated: a NATS_URL for Fanfare. */
  url: string
  /** Starts every node and waits until JetStream answers (the cluster has elected its meta leader). */
  start: () => Promise<void>
  stop: () => Promise<void>
}

/**
 * `size` nats-servers with JetStream forming one cluster (`-cluster_name`, full mesh of routes),
 * each node named `n<i>` (JetStream clustering needs server names) storing under
 * `<storeDir>/n<i>`. A node can be killed and started again on the same ports and store.
 */
export function privateNatsCluster(opts: { size: number; storeDir: string; name?: string }): PrivateNatsCluster {
  const clientPorts = Array.from({ length: opts.size }, () => freePort())
  const routePorts = Array.from({ length: opts.size }, () => freePort())
  const routes = routePorts.map((p) => `nats://127.0.0.1:${p}`).join(',')
  const nodes = clientPorts.map((port, i) =>
    privateNats({
      port,
      storeDir: join(opts.storeDir, `n${i + 1}`),
      args: ['-n', `n${i + 1}`, '--cluster_name', opts.name ?? 'fanfare-test', '--cluster', `nats://127.0.0.1:${routePorts[i]}`, '--routes', routes],
    }),
  )
  return {
    nodes,
    url: nodes.map((n) => n.url).join(','),
    start: async () => {
      await Promise.all(nodes.map((n) => n.start()))
      const nc = await connect({ servers: nodes.map((n) => n.url) })
      try {
        await until('the cluster\'s JetStream to answer', async () => {
          const jsm = await jetstreamManager(nc, { timeout: 1000 })
          return (await jsm.getAccountInfo()) !== undefined
        }, 30_000, 200)
      } finally {
        await nc.close()
      }
    },
    stop: async () => {
      await Promise.all(nodes.map((n) => n.stop()))
    },
  }
}

export function privateNats(opts: { port: number; storeDir: string; args?: string[] }): PrivateNats {
  const binary = findNatsServer()
  if (!binary) throw new Error('nats-server is not installed')
  mkdirSync(opts.storeDir, { recursive: true })
  const url = `nats://127.0.0.1:${opts.port}`
  let proc: Subprocess | undefined
  return {
    url,
    start: async () => {
      const args = ['-a', '127.0.0.1', '-p', String(opts.port), '-js', '-sd', opts.storeDir, ...(opts.args ?? [])]
      proc = Bun.spawn([binary, ...args], { stdout: 'ignore', stderr: 'pipe' })
      await waitUntilReady(url, proc, 15_000)
    },
    kill: async () => {
      const p = proc
      proc = undefined
      if (!p || p.exitCode !== null) return
      p.kill('SIGKILL')
      await p.exited
    },
    stop: async () => {
      const p = proc
      proc = undefined
      if (!p || p.exitCode !== null) return
      p.kill('SIGTERM')
      const timer = setTimeout(() => p.kill('SIGKILL'), 10_000)
      await p.exited
      clearTimeout(timer)
    },
  }
}
