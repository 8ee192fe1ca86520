import { afterAll, describe, expect, test } from 'bun:test'
import { until } from '../core/testing/wait'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { jetstreamManager } from '@nats-io/jetstream'
import { connect } from '@nats-io/transport-node'
import { createLogger } from '../core/logger'
import { startEmbeddedNats } from './embedded-nats'

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
      await expect(startEmbeddedNats({ dataDir, logger })).rejects.toThrow(/in use by process/)
    } finally {
      await first.stop()
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
