import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { Subprocess } from 'bun'
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
  /** What the server wrote on stderr (its log), for a failing test's message. */
  log: () => string
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
}

export function privateNats(opts: PrivateNatsOptions): PrivateNats {
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
    start: async () => {
      const p = Bun.spawn([binary, '-c', confFile], { stdout: 'ignore', stderr: 'pipe' })
      proc = p
      void (async () => {
        const decoder = new TextDecoder()
        for await (const chunk of p.stderr as ReadableStream<Uint8Array>) log = (log + decoder.decode(chunk)).slice(-20_000)
      })()
      await waitUntilReady(url, p, 15_000)
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

/** The server's config file: the command line cannot set a domain, leafnodes or their permissions. */
function natsConf(opts: PrivateNatsOptions): string {
  const q = JSON.stringify
  const lines = [
    `host: 127.0.0.1`,
    `port: ${opts.port}`,
    `jetstream { store_dir: ${q(opts.storeDir)}${opts.domain ? `, domain: ${q(opts.domain)}` : ''} }`,
  ]
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
