import { afterAll, describe, expect, test } from 'bun:test'
import { until } from '../core/testing/wait'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { jetstreamManager } from '@nats-io/jetstream'
import { connect } from '@nats-io/transport-node'
import { createLogger } from '../core/logger'
import { DirInUse } from '../core/db/dir-lock'
import { findNatsServer, startEmbeddedNats, waitUntilReady } from './embedded-nats'

// These tests start their own nats-server processes on free ports with their own store
// directories; they never touch the machine's NATS or Postgres, so no createTestEnv here.
const logger = createLogger('silent')
const dirs: string[] = []
const scratch = () => {
  const dir = mkdtempSync(join(tmpdir(), 'fanfare-nats-'))
  dirs.push(dir)
  return dir
}
afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true })
})

const alive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}
const natsPidOf = (dataDir: string) => Number(readFileSync(join(dataDir, 'nats', 'nats-server.pid'), 'utf8'))
/** A port of this suite's own for a nats-server that is not the embedded one. */
const FOREIGN_PORT = 41222


describe('startEmbeddedNats', () => {
  test('starts a JetStream server on a free port and stops it', async () => {
    const dataDir = scratch()
    const nats = await startEmbeddedNats({ dataDir, logger })
    try {
      expect(nats.url).toMatch(/^nats:\/\/127\.0\.0\.1:\d+$/)
      expect(nats.url).not.toBe('nats://127.0.0.1:4222')
      const nc = await connect({ servers: nats.url })
      const jsm = await jetstreamManager(nc)
      const info = await jsm.getAccountInfo()
      expect(info.limits).toBeDefined()
      await nc.close()
    } finally {
      const pid = natsPidOf(dataDir)
      await nats.stop()
      await nats.stop() // twice is harmless
      expect(alive(pid)).toBe(false)
    }
  })

  test('refuses a second server on the same store directory', async () => {
    const dataDir = scratch()
    const first = await startEmbeddedNats({ dataDir, logger })
    try {
      const second = startEmbeddedNats({ dataDir, logger })
      await expect(second).rejects.toThrow(/in use by process/)
      await expect(second).rejects.toBeInstanceOf(DirInUse)
    } finally {
      await first.stop()
    }
  })

  test("a stale pid file naming another store's nats-server (a reused pid) is not taken for ours: neither refused for nor stopped", async () => {
    // Another nats-server, of another store directory, whose pid the stale pid file names: what a
    // pid reused after a crash or reboot, or another user's server, looks like.
    const otherDir = join(scratch(), 'nats')
    const other = Bun.spawn([findNatsServer()!, '-a', '127.0.0.1', '-p', String(FOREIGN_PORT), '-js', '-sd', otherDir], { stdout: 'ignore', stderr: 'ignore' })
    try {
      await waitUntilReady(`nats://127.0.0.1:${FOREIGN_PORT}`, other, 15_000)
      const dataDir = scratch()
      mkdirSync(join(dataDir, 'nats'))
      writeFileSync(join(dataDir, 'nats', 'nats-server.pid'), String(other.pid))
      // So is a process whose arguments merely mention nats-server and the store.
      const lookalike = Bun.spawn(['sh', '-c', 'sleep 60; exit 0', 'nats-server', '-js', '-sd', join(dataDir, 'nats')], { stdout: 'ignore', stderr: 'ignore' })
      try {
        for (const pid of [other.pid, lookalike.pid]) {
          writeFileSync(join(dataDir, 'nats', 'nats-server.pid'), String(pid))
          const nats = await startEmbeddedNats({ dataDir, logger })
          const ours = natsPidOf(dataDir)
          expect(ours).not.toBe(pid)
          await nats.stop()
          expect([alive(ours), alive(pid)]).toEqual([false, true])
        }
      } finally {
        lookalike.kill('SIGKILL')
      }
      expect(other.exitCode).toBeNull()
    } finally {
      other.kill('SIGKILL')
    }
  })

  test('dies with its parent, even on SIGKILL', async () => {
    const dataDir = scratch()
    const module = resolve(import.meta.dir, 'embedded-nats.ts')
    const loggerModule = resolve(import.meta.dir, '../core/logger.ts')
    const code = `
      const { startEmbeddedNats } = await import(${JSON.stringify(module)})
      const { createLogger } = await import(${JSON.stringify(loggerModule)})
      const nats = await startEmbeddedNats({ dataDir: ${JSON.stringify(dataDir)}, logger: createLogger('silent') })
      console.log(nats.url)
      await Bun.sleep(60_000)
    `
    const parent = Bun.spawn([process.execPath, '-e', code], { stdout: 'pipe', stderr: 'inherit' })
    try {
      const reader = parent.stdout.getReader()
      const { value } = await reader.read()
      expect(new TextDecoder().decode(value)).toMatch(/^nats:\/\//)
      const pid = natsPidOf(dataDir)
      expect(alive(pid)).toBe(true)
      parent.kill('SIGKILL')
      await parent.exited
      await until('nats-server to exit after its parent died', () => !alive(pid))
    } finally {
      parent.kill('SIGKILL')
    }
  })
})
