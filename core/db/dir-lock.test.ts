import { afterAll, describe, expect, test } from 'bun:test'
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { acquireDirLock } from './dir-lock'

const dirs: string[] = []
const scratchLock = () => {
  const dir = mkdtempSync(join(tmpdir(), 'fanfare-lock-'))
  dirs.push(dir)
  return join(dir, 'pglite.lock')
}
const children: { kill: (signal?: number | NodeJS.Signals) => void }[] = []
afterAll(() => {
  for (const c of children) c.kill('SIGKILL')
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true })
})

const moduleUrl = JSON.stringify(resolve(import.meta.dir, 'dir-lock.ts'))

/** A real bun process that takes the lock (and optionally starts a long-lived child of its own), then waits. */
async function startHolder(path: string, opts: { grandchild?: boolean } = {}) {
  const code = `
    const { acquireDirLock } = await import(${moduleUrl})
    acquireDirLock(${JSON.stringify(path)})
    ${opts.grandchild ? "const g = Bun.spawn(['sleep', '60']); console.log('grandchild ' + g.pid)" : ''}
    console.log('locked')
    await Bun.sleep(60_000)
  `
  const proc = Bun.spawn([process.execPath, '-e', code], { stdout: 'pipe', stderr: 'pipe' })
  children.push(proc)
  let out = ''
  const reader = proc.stdout.getReader()
  while (!out.includes('locked\n')) {
    const { value, done } = await reader.read()
    if (done) throw new Error(`holder exited before locking: ${await new Response(proc.stderr).text()}`)
    out += new TextDecoder().decode(value)
  }
  const grandchild = Number(/grandchild (\d+)/.exec(out)?.[1] ?? 0)
  if (grandchild) children.push({ kill: (s) => process.kill(grandchild, s) })
  return { proc, grandchild }
}

/** Runs a second bun process that tries to take the lock; its exit code and stderr. */
async function tryInChild(path: string) {
  const code = `
    const { acquireDirLock } = await import(${moduleUrl})
    try { acquireDirLock(${JSON.stringify(path)}); console.log('acquired') } catch (err) { console.error(err.message); process.exit(3) }
  `
  const proc = Bun.spawn([process.execPath, '-e', code], { stdout: 'pipe', stderr: 'pipe' })
  const [status, stdout, stderr] = await Promise.all([proc.exited, new Response(proc.stdout).text(), new Response(proc.stderr).text()])
  return { status, stdout, stderr }
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

describe('acquireDirLock (flock held for the life of the process)', () => {
  test('a second process cannot take the lock while the first holds it', async () => {
    const path = scratchLock()
    const { proc } = await startHolder(path)
    const second = await tryInChild(path)
    expect(second.status).toBe(3)
    expect(second.stderr).toContain(`in use by process ${proc.pid}`)
    expect(() => acquireDirLock(path)).toThrow(`in use by process ${proc.pid}`)
    proc.kill('SIGKILL')
  })

  test('after the holder is SIGKILLed the lock is free at once, though the file is still there', async () => {
    const path = scratchLock()
    const { proc } = await startHolder(path)
    proc.kill('SIGKILL')
    await proc.exited
    expect(existsSync(path)).toBe(true)
    const release = acquireDirLock(path)
    release()
  })

  test("the holder's own children do not keep the lock after it dies", async () => {
    const path = scratchLock()
    const { proc, grandchild } = await startHolder(path, { grandchild: true })
    proc.kill('SIGKILL')
    await proc.exited
    expect(alive(grandchild)).toBe(true)
    acquireDirLock(path)()
  })

  test('a lock file naming our own pid (PID 1 after an unclean stop) or any live pid does not block', () => {
    for (const pid of [process.pid, process.ppid, 1]) {
      const path = scratchLock()
      writeFileSync(path, String(pid))
      acquireDirLock(path)()
    }
  })

  test('twice in one process: the second is refused; after release it can be taken again', () => {
    const path = scratchLock()
    const release = acquireDirLock(path)
    expect(() => acquireDirLock(path)).toThrow(`in use by process ${process.pid}`)
    release()
    release() // twice is harmless
    acquireDirLock(path)()
  })
})
