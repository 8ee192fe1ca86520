import { mkdirSync, writeFileSync } from 'node:fs'
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
  /** What the server wrote on stderr (its log), for a failing test's message. */
  log: () => string
  /**
   * Rewrites the config with `change` and has the running server reload it (SIGHUP), as an
   * operator changing users or permissions does: clients stay connected under the new rules.
   */
  reload: (change: Partial<PrivateNatsOptions>) => Promise<void>
}

/** Where a leaf server connects to its hub, and which subjects the link does not carry. */
export type LeafRemote = {
  /** The hub's leafnode listener, `nats-leaf://host:port`. */
  url: string
  /** Subjects the hub may not send to this leaf, and this leaf may not send to the hub. */
  deny?: string[]
}

export type PrivateNatsOptions = {
  port: number
  storeDir: string
  /** JetStream domain (a hub and each leaf with JetStream need their own). */
  domain?: string
  /** Accept leaf servers on this port (a hub). */
  leafPort?: number
  /** The `host:port` a hub tells its leaves to reconnect to (a proxy in front of leafPort). */
  leafAdvertise?: string
  /** Connect to a hub as a leaf server. */
  remote?: LeafRemote
  /** The server's name (JetStream clustering needs one). */
  name?: string
  /** Join a cluster: its name, this server's route port, and every server's route URL. */
  cluster?: { name: string; port: number; routes: string[] }
  /** More settings inside the `jetstream { }` block, e.g. `max_file_store: 2MB` (storage an operator sized too small). */
  jetstream?: string
  /** More top-level config lines: `max_payload: 4KB`, ... */
  extra?: string[]
  /**
   * Clients must log in as one of these users; `permissions` is the user's NATS permissions block,
   * e.g. `{ publish: { deny: ["$JS.API.>"] } }`. Readiness is checked as the first user.
   */
  users?: { user: string; password: string; permissions?: string }[]
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
 * `size` nats-servers with JetStream forming one cluster (full mesh of routes), each node named
 * `n<i>` (JetStream clustering needs server names) storing under `<storeDir>/n<i>`. A node can be
 * killed and started again on the same ports and store.
 */
export function privateNatsCluster(opts: { size: number; storeDir: string; name?: string }): PrivateNatsCluster {
  const clientPorts = Array.from({ length: opts.size }, () => freePort())
  const routePorts = Array.from({ length: opts.size }, () => freePort())
  const routes = routePorts.map((p) => `nats://127.0.0.1:${p}`)
  const nodes = clientPorts.map((port, i) =>
    privateNats({
      port,
      storeDir: join(opts.storeDir, `n${i + 1}`),
      name: `n${i + 1}`,
      cluster: { name: opts.name ?? 'fanfare-test', port: routePorts[i], routes },
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

export function privateNats(options: PrivateNatsOptions): PrivateNats {
  const opts = { ...options }
  const binary = findNatsServer()
  if (!binary) throw new Error('nats-server is not installed')
  mkdirSync(opts.storeDir, { recursive: true })
  const url = `nats://127.0.0.1:${opts.port}`
  const confFile = join(opts.storeDir, 'nats.conf')
  writeFileSync(confFile, natsConf(opts))
  let proc: Subprocess | undefined
  let log = ''
  return {
    url,
    log: () => log,
    reload: async (change) => {
      Object.assign(opts, change)
      writeFileSync(confFile, natsConf(opts))
      const reloadsBefore = log.split('Reloaded server configuration').length
      proc?.kill('SIGHUP')
      await until('nats-server to reload its config', () => log.split('Reloaded server configuration').length > reloadsBefore, 10_000, 50)
    },
    start: async () => {
      const p = Bun.spawn([binary, '-c', confFile], { stdout: 'ignore', stderr: 'pipe' })
      proc = p
      void (async () => {
        const decoder = new TextDecoder()
        for await (const chunk of p.stderr as ReadableStream<Uint8Array>) log = (log + decoder.decode(chunk)).slice(-20_000)
      })()
      const login = opts.users?.[0]
      await waitUntilReady(url, p, 15_000, login && { user: login.user, pass: login.password })
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
    kill: async () => {
      const p = proc
      proc = undefined
      if (!p || p.exitCode !== null) return
      p.kill('SIGKILL')
      await p.exited
    },
  }
}

/** The server's config file: the command line cannot set a domain, leafnodes or their permissions. */
function natsConf(opts: PrivateNatsOptions): string {
  const q = JSON.stringify
  const lines = [
    `host: 127.0.0.1`,
    `port: ${opts.port}`,
    `jetstream { store_dir: ${q(opts.storeDir)}${opts.domain ? `, domain: ${q(opts.domain)}` : ''}${opts.jetstream ? `, ${opts.jetstream}` : ''} }`,
    ...(opts.extra ?? []),
  ]
  if (opts.users) {
    const users = opts.users.map((u) => `{ user: ${q(u.user)}, password: ${q(u.password)}${u.permissions ? `, permissions: ${u.permissions}` : ''} }`)
    lines.push(`authorization { users: [ ${users.join(', ')} ] }`)
  }
  if (opts.name) lines.push(`server_name: ${q(opts.name)}`)
  if (opts.cluster) {
    lines.push(`cluster { name: ${q(opts.cluster.name)}, listen: "127.0.0.1:${opts.cluster.port}", routes: ${q(opts.cluster.routes)} }`)
  }
  if (opts.leafPort !== undefined || opts.remote) {
    const remote = opts.remote
      ? `remotes: [ { url: ${q(opts.remote.url)}${opts.remote.deny?.length ? `, deny_imports: ${q(opts.remote.deny)}, deny_exports: ${q(opts.remote.deny)}` : ''} } ]`
      : ''
    // A hub tells its leaves where to reconnect: the advertised address (a test proxy in between
    // must stay their only way to it), else its own.
    const listen =
      opts.leafPort !== undefined ? `host: 127.0.0.1, port: ${opts.leafPort}${opts.leafAdvertise ? `, advertise: ${q(opts.leafAdvertise)}` : ''}` : ''
    // reconnect: seconds between a leaf's attempts to reach its hub again (the default is 1 s).
    lines.push(`leafnodes { ${[listen, remote, opts.remote ? 'reconnect: 1' : ''].filter(Boolean).join(', ')} }`)
  }
  return `${lines.join('\n')}\n`
}
