import type { Subprocess } from 'bun'
import { resolve } from 'node:path'
import { readdirSync, readFileSync } from 'node:fs'

/** Repository root (bench/ is one level down). */
export const ROOT = resolve(import.meta.dir, '../..')

/**
 * A helper process (load clients, baseline servers) that talks JSON lines: the parent writes
 * commands on stdin, the child answers one JSON line on stdout per command.
 */
export type Child = {
  proc: Subprocess<'pipe', 'pipe', 'pipe'>
  /** Sends a command and waits for the next JSON line from the child. */
  ask: <T = any>(command: object, timeoutMs?: number) => Promise<T>
  /** Waits for the next JSON line (e.g. the "ready" line printed at start). */
  next: <T = any>(timeoutMs?: number) => Promise<T>
  stderr: () => string
  stop: () => Promise<void>
}

/** Starts `cmd` (e.g. [bun, file] or [node, file]) with JSON config in FANFARE_BENCH_CONFIG. */
export function startChild(cmd: string[], config: object, env: Record<string, string> = {}): Child {
  const proc = Bun.spawn(cmd, {
    cwd: ROOT,
    env: { ...process.env, ...env, FANFARE_BENCH_CONFIG: JSON.stringify(config) },
    stdin: 'pipe',
    stdout: 'pipe',
    stderr: 'pipe',
  })
  let errText = ''
  void (async () => {
    const d = new TextDecoder()
    for await (const c of proc.stderr) errText = (errText + d.decode(c)).slice(-8000)
  })()
  const lines: string[] = []
  const waiters: ((line: string | null) => void)[] = []
  let ended = false
  void (async () => {
    const d = new TextDecoder()
    let buf = ''
    for await (const c of proc.stdout) {
      buf += d.decode(c, { stream: true })
      let i: number
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i)
        buf = buf.slice(i + 1)
        if (!line.startsWith('{')) continue
        const w = waiters.shift()
        if (w) w(line)
        else lines.push(line)
      }
    }
    ended = true
    for (const w of waiters.splice(0)) w(null)
  })()
  const next = <T>(timeoutMs = 120_000) =>
    new Promise<T>((ok, fail) => {
      const take = (line: string | null) => {
        clearTimeout(timer)
        if (line === null) return fail(new Error(`${cmd.join(' ')} exited ${proc.exitCode}: ${errText.slice(-2000)}`))
        const v = JSON.parse(line)
        if (v.error) fail(new Error(`${cmd.at(-1)}: ${v.error}`))
        else ok(v as T)
      }
      const timer = setTimeout(() => {
        const i = waiters.indexOf(take)
        if (i >= 0) waiters.splice(i, 1)
        fail(new Error(`${cmd.at(-1)} did not answer within ${timeoutMs} ms: ${errText.slice(-2000)}`))
      }, timeoutMs)
      const line = lines.shift()
      if (line !== undefined) take(line)
      else if (ended) take(null)
      else waiters.push(take)
    })
  return {
    proc,
    next,
    ask: (command, timeoutMs) => {
      proc.stdin.write(`${JSON.stringify(command)}\n`)
      proc.stdin.flush()
      return next(timeoutMs)
    },
    stderr: () => errText,
    stop: async () => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM')
      const timer = setTimeout(() => proc.kill('SIGKILL'), 10_000)
      await proc.exited
      clearTimeout(timer)
    },
  }
}

/** Reads commands (JSON lines) from stdin in a child; answers with `reply`. */
export async function serveCommands(handle: (command: any) => Promise<object> | object): Promise<void> {
  const d = new TextDecoder()
  let buf = ''
  for await (const c of Bun.stdin.stream()) {
    buf += d.decode(c, { stream: true })
    let i: number
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i)
      buf = buf.slice(i + 1)
      if (!line.trim()) continue
      try {
        reply(await handle(JSON.parse(line)))
      } catch (err) {
        reply({ error: String((err as Error)?.stack ?? err) })
      }
    }
  }
}

export const reply = (v: object) => process.stdout.write(`${JSON.stringify(v)}\n`)

/** The JSON config the parent passed. */
export const childConfig = <T>(): T => JSON.parse(process.env.FANFARE_BENCH_CONFIG ?? '{}') as T

/** Resident set size of a process in bytes (Linux /proc), NaN when unreadable. */
export function rssOf(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m ? Number(m[1]) * 1024 : Number.NaN
  } catch {
    return Number.NaN
  }
}

/** utime + stime in seconds from a /proc `stat` file's text (fields after the command name, which may hold spaces). */
const statSeconds = (stat: string): number => {
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(fields[11]) + Number(fields[12])) / 100 // USER_HZ on Linux
}

/** CPU time a process used so far, in seconds (user + system; Linux /proc), NaN when unreadable. */
export function cpuOf(pid: number): number {
  try {
    return statSeconds(readFileSync(`/proc/${pid}/stat`, 'utf8'))
  } catch {
    return Number.NaN
  }
}

/** The machine's CPU time so far in seconds, busy and in all (the first line of /proc/stat; NaN when unreadable). */
export function machineCpu(): { busy: number; total: number } {
  try {
    // user nice system idle iowait irq softirq steal (guest time is inside user already)
    const ticks = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1, 9).map(Number)
    const total = ticks.reduce((a, b) => a + b, 0)
    return { busy: (total - ticks[3] - ticks[4]) / 100, total: total / 100 }
  } catch {
    return { busy: Number.NaN, total: Number.NaN }
  }
}

/** CPU seconds of a process's threads, grouped: the JS thread, JSC's compiler threads, the rest (zeros once it is gone). */
export function threadSecondsOf(pid: number): { js: number; jit: number; other: number } {
  const out = { js: 0, jit: 0, other: 0 }
  let tasks: string[] = []
  try {
    tasks = readdirSync(`/proc/${pid}/task`)
  } catch {
    return out
  }
  for (const t of tasks) {
    try {
      const s = statSeconds(readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8'))
      const comm = readFileSync(`/proc/${pid}/task/${t}/comm`, 'utf8').trim()
      if (t === String(pid)) out.js += s
      else if (comm === 'JITWorker' || comm === 'JSCWarmUp') out.jit += s
      else out.other += s
    } catch {}
  }
  return out
}

/**
 * The pid of the nats-server listening on `url`'s port (found by the port in its command line:
 * start a private one as `nats-server -js -p <port>`), undefined when none is found. The shared
 * server (no `-p`) is not found: its CPU would include other sessions' work.
 */
export function natsServerPid(url: string): number | undefined {
  const port = new URL(url).port || '4222'
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue
    try {
      const cmd = readFileSync(`/proc/${d}/cmdline`, 'utf8')
      if (cmd.includes('nats-server') && cmd.split('\0').includes(port)) return Number(d)
    } catch {}
  }
}
