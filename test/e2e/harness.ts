import { resolve } from 'node:path'
import type { Subprocess } from 'bun'
import { afterAll, beforeAll } from 'bun:test'
import { freePort } from '../../core/process'
import { createTestEnv, type TestEnv } from '../../core/testing/env'
import { until } from '../../core/testing/wait'

export { freePort, until }

export const ROOT = resolve(import.meta.dir, '../..')
const BUN = process.execPath


export type Proc = { name: string; proc: Subprocess; output: () => string; stop: (signal?: NodeJS.Signals) => Promise<number> }

/**
 * Starts a real Fanfare process (`api/src/main.ts`, ...) with the given environment, in `cwd`
 * (default: this checkout; another one, say a fresh clone, runs that checkout's code).
 */
export function spawnProc(name: string, entry: string, env: Record<string, string | undefined>, cwd = ROOT): Proc {
  return spawnCommand(name, [BUN, entry], env, cwd)
}

/**
 * Starts a real Fanfare process as a container runs it: pid 1 on a host named `host`, in PID and
 * UTS namespaces of its own (unshare(1); a user other than root gets a user namespace too). Started again with the same
 * `host`, it has the same `hostname-pid` node id: a container restarted in place. Its `stop`
 * stops the unshare, which kills the process with SIGKILL whatever the signal (`--kill-child`).
 */
export function spawnInContainer(name: string, host: string, entry: string, env: Record<string, string | undefined>): Proc {
  if (!/^[a-z0-9-]+$/.test(host)) throw new Error(`not a plain host name: ${host}`)
  // Root makes the namespaces itself; anyone else gets them inside a user namespace of their own.
  const asUser = process.getuid?.() === 0 ? [] : ['--user', '--map-root-user']
  return spawnCommand(name, ['unshare', ...asUser, '--uts', '--pid', '--kill-child', 'sh', '-c', `hostname ${host} && exec "$0" "$1"`, BUN, entry], env, ROOT)
}

function spawnCommand(name: string, cmd: string[], env: Record<string, string | undefined>, cwd: string): Proc {
  let output = ''
  const cleanEnv: Record<string, string> = {}
  for (const [k, v] of Object.entries({ ...process.env, ...env })) if (v !== undefined) cleanEnv[k] = v
  for (const k of Object.keys(env)) if (env[k] === undefined) delete cleanEnv[k]
  const proc = Bun.spawn(cmd, { cwd, env: cleanEnv, stdout: 'pipe', stderr: 'pipe' })
  const collect = async (stream: ReadableStream<Uint8Array>) => {
    const decoder = new TextDecoder()
    for await (const chunk of stream) output += decoder.decode(chunk)
  }
  void collect(proc.stdout as ReadableStream<Uint8Array>)
  void collect(proc.stderr as ReadableStream<Uint8Array>)
  return {
    name,
    proc,
    output: () => output,
    stop: async (signal = 'SIGTERM') => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal)
      const timer = setTimeout(() => proc.kill('SIGKILL'), 15_000)
      const code = await proc.exited
      clearTimeout(timer)
      return code
    },
  }
}

/**
 * Runs a Fanfare process that is expected to refuse to start (PORT and HOST of its own), or a
 * command (`args` after the entry), until it exits, killed after `timeoutMs` (exit 137: it was
 * still running); its exit code and output.
 */
export async function runUntilExit(entry: string, env: Record<string, string | undefined>, timeoutMs = 15_000, args: string[] = []): Promise<{ code: number; output: string }> {
  const proc = Bun.spawn([process.execPath, entry, ...args], {
    cwd: ROOT,
    env: { PATH: process.env.PATH, PORT: String(freePort()), HOST: '127.0.0.1', ...env },
    stdout: 'pipe',
    stderr: 'pipe',
  })
  const timer = setTimeout(() => proc.kill('SIGKILL'), timeoutMs)
  const [code, out, err] = await Promise.all([proc.exited, new Response(proc.stdout).text(), new Response(proc.stderr).text()])
  clearTimeout(timer)
  return { code, output: out + err }
}

export async function waitReady(baseUrl: string, procs: Proc[], timeoutMs = 30_000) {
  await until(
    `${baseUrl}/readyz`,
    async () => {
      for (const p of procs) {
        if (p.proc.exitCode !== null) throw new Error(`${p.name} exited ${p.proc.exitCode}:\n${p.output().slice(-3000)}`)
      }
      const res = await fetch(`${baseUrl}/readyz`).catch(() => undefined)
      return res?.status === 200
    },
    timeoutMs,
    100,
  )
}

/** A WebSocket test client that records every frame it receives. */
export class WsClient {
  frames: any[] = []
  /** When each frame arrived (Date.now()), by the frame's index. */
  times: number[] = []
  closed: { code: number; reason: string } | undefined
  /** When the close arrived (Date.now()). */
  closedAt: number | undefined
  private ws: WebSocket
  private constructor(ws: WebSocket) {
    this.ws = ws
    ws.onmessage = (e) => {
      this.frames.push(JSON.parse(String(e.data)))
      this.times.push(Date.now())
    }
    ws.onclose = (e) => {
      this.closed = { code: e.code, reason: e.reason }
      this.closedAt = Date.now()
    }
  }
  /** Opens a socket; `headers` (Bun's extension) let a test pose as a browser page (Origin) or a proxy's client (X-Forwarded-For). */
  static async open(url: string, headers?: Record<string, string>): Promise<WsClient> {
    // The DOM typings (which win over bun-types here) lack Bun's options form of the constructor.
    const ws = headers ? new WebSocket(url, { headers } satisfies Bun.WebSocketOptions as unknown as string[]) : new WebSocket(url)
    await new Promise<void>((ok, fail) => {
      ws.onopen = () => ok()
      ws.onerror = () => fail(new Error(`could not open ${url}`))
    })
    return new WsClient(ws)
  }
  send(frame: unknown) {
    this.ws.send(typeof frame === 'string' ? frame : JSON.stringify(frame))
  }
  async reply(ref: string, timeoutMs = 10_000) {
    return until(`reply to ${ref}`, () => this.frames.find((f) => f.ref === ref), timeoutMs)
  }
  of(channel: string) {
    return this.frames.filter((f) => f.channel === channel && (f.op === 'snapshot' || f.op === 'update'))
  }
  close() {
    this.ws.close()
  }
}

/**
 * Starts one API process per name (`api-<name>`, each on a free port) against `vars`, and waits
 * until every one is ready. Their ports are returned in the order of `names`; the processes are
 * added to `procs` (stop them there).
 */
export async function startApiNodes(names: string[], vars: Record<string, string>, procs: Proc[]): Promise<number[]> {
  const ports = names.map(() => freePort())
  names.forEach((name, i) => procs.push(spawnProc(`api-${name}`, 'api/src/main.ts', { ...vars, PORT: String(ports[i]) })))
  for (const port of ports) await waitReady(`http://127.0.0.1:${port}`, procs)
  return ports
}

export type ApiNodes = {
  /** The test environment (database, streams, secrets); set once the calling describe's beforeAll has run. */
  readonly env: TestEnv
  /** Each node's port, in the order of `names`. */
  readonly ports: number[]
  /** Each node's process, in the order of `names` (a test may stop one). */
  readonly procs: Proc[]
  /** Opens a WebSocket to a node (`/v1/ws`, `?query` when given), closed after all the tests. */
  open: (node: number, query?: string) => Promise<WsClient>
}

/**
 * Registers, in the calling describe, a beforeAll that makes a test environment from `vars`
 * (createTestEnv) and starts one API node per name on it (startApiNodes), and an afterAll that
 * closes every client opened through it, stops the nodes with SIGKILL and cleans up the
 * environment. `timeout` is the beforeAll's (bun:test's default when not given).
 */
export function useApiNodes(names: string[], vars: Record<string, string>, opts: { timeout?: number } = {}): ApiNodes {
  let env: TestEnv | undefined
  const ports: number[] = []
  const procs: Proc[] = []
  const opened: WsClient[] = []
  beforeAll(async () => {
    env = await createTestEnv(vars)
    ports.push(...(await startApiNodes(names, env.vars, procs)))
  }, opts.timeout)
  afterAll(async () => {
    for (const c of opened) c.close()
    await Promise.all(procs.map((p) => p.stop('SIGKILL')))
    await env?.cleanup()
  })
  return {
    get env() {
      if (!env) throw new Error('useApiNodes: the environment is made in beforeAll; use it inside a test')
      return env
    },
    ports,
    procs,
    open: async (node, query) => {
      const c = await WsClient.open(`ws://127.0.0.1:${ports[node]}/v1/ws${query ? `?${query}` : ''}`)
      opened.push(c)
      return c
    },
  }
}
