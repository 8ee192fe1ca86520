import { existsSync, mkdirSync } from 'node:fs'
import type { Subprocess } from 'bun'
import { connect } from '@nats-io/transport-node'
import { until } from '../e2e/harness'

/** Path of the nats-server binary, or undefined when it is not installed. */
export function natsServerBinary(): string | undefined {
  return Bun.which('nats-server') ?? ['/usr/sbin/nats-server', '/usr/local/bin/nats-server'].find((p) => existsSync(p))
}

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
}

export function privateNats(opts: { port: number; storeDir: string }): PrivateNats {
  const binary = natsServerBinary()
  if (!binary) throw new Error('nats-server is not installed')
  mkdirSync(opts.storeDir, { recursive: true })
  const url = `nats://127.0.0.1:${opts.port}`
  let proc: Subprocess | undefined
  return {
    url,
    start: async () => {
      proc = Bun.spawn([binary, '-a', '127.0.0.1', '-p', String(opts.port), '-js', '-sd', opts.storeDir], { stdout: 'ignore', stderr: 'pipe' })
      const started = proc
      await until(
        `nats-server on ${url}`,
        async () => {
          if (started.exitCode !== null) throw new Error(`nats-server exited ${started.exitCode}`)
          const nc = await connect({ servers: url, timeout: 500, reconnect: false })
          await nc.close()
          return true
        },
        15_000,
        100,
      )
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
