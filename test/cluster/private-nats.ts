import { mkdirSync } from 'node:fs'
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
}

export function privateNats(opts: { port: number; storeDir: string }): PrivateNats {
  const binary = findNatsServer()
  if (!binary) throw new Error('nats-server is not installed')
  mkdirSync(opts.storeDir, { recursive: true })
  const url = `nats://127.0.0.1:${opts.port}`
  let proc: Subprocess | undefined
  return {
    url,
    start: async () => {
      proc = Bun.spawn([binary, '-a', '127.0.0.1', '-p', String(opts.port), '-js', '-sd', opts.storeDir], { stdout: 'ignore', stderr: 'pipe' })
      await waitUntilReady(url, proc, 15_000)
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
