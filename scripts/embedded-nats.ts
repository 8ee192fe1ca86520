import { existsSync, mkdirSync, readFileSync } from 'node:fs'
import { basename, resolve } from 'node:path'
import { connect } from '@nats-io/transport-node'
import type { Logger } from '../core/logger'
import { freePort, isAlive } from '../core/process'
import { StartFailure } from '../core/start-failure'
import { DirInUse } from '../core/db/dir-lock'

/** A nats-server child process with JetStream, owned by this process. */
export type EmbeddedNats = {
  /** nats://127.0.0.1:<port> */
  url: string
  /** Stops the server (SIGTERM, then SIGKILL after a deadline). Safe to call twice. */
  stop: () => Promise<void>
  /**
   * Kills the server and its wrapper at once (SIGKILL), for a forced exit: no waiting, no clean
   * JetStream shutdown (its store recovers on the next start).
   */
  kill: () => void
}

/** Thrown when no nats-server binary is available and none could be installed. */
export class NatsServerMissing extends StartFailure {
  constructor() {
    super(
      [
        'nats-server was not found (looked on PATH and in /usr/sbin).',
        'Install it, for example:',
        '  sudo apt-get install -y nats-server        (Debian/Ubuntu)',
        '  or download a release from https://nats.io/download/ and put nats-server on PATH',
        'or point Fanfare at an existing server with NATS_URL=nats://host:4222 (JetStream enabled).',
      ].join('\n'),
    )
    this.name = 'NatsServerMissing'
  }
}

/**
 * Starts a private nats-server with JetStream on a free 127.0.0.1 port, storing under
 * `<dataDir>/nats`, and waits until it accepts connections. The server dies with this process even
 * when this process is killed with SIGKILL (see `wrapper` below).
 */
export async function startEmbeddedNats(opts: {
  dataDir: string
  logger: Logger
  /** Install nats-server with apt-get when missing and running as root. Default true. */
  allowInstall?: boolean
  /** How long to wait for the server to accept connections. Default 15 s. */
  readyTimeoutMs?: number
  /** Ports the server must not take: the ones this process is about to listen on. */
  avoidPorts?: readonly number[]
}): Promise<EmbeddedNats> {
  const log = opts.logger.child({ component: 'embedded-nats' })
  const binary = await findOrInstallNatsServer(log, opts.allowInstall ?? true)
  const storeDir = resolve(opts.dataDir, 'nats')
  mkdirSync(storeDir, { recursive: true })
  // Always a port picked by the kernel: 4222 may belong to a system NATS we must not share.
  const port = freePort(opts.avoidPorts)
  const url = `nats://127.0.0.1:${port}`
  const pidFile = resolve(storeDir, 'nats-server.pid')
  // Two servers on one JetStream store directory corrupt it: the pid file doubles as a lock.
  const holder = readPid(pidFile)
  if (holder && servesStore(holder, storeDir, pidFile)) {
    throw new DirInUse(`the NATS store at ${storeDir} is in use by process ${holder} (another Fanfare?); stop it first`)
  }
  const args = ['-a', '127.0.0.1', '-p', String(port), ...storeArgs(storeDir, pidFile)]
  // nats-server has no "die with parent" option and Bun has no PR_SET_PDEATHSIG. The shell wrapper
  // holds our stdin pipe: when this process exits for any reason (SIGKILL included) the kernel
  // closes the pipe, `read` returns, and the wrapper stops nats-server. Closing stdin is also how
  // stop() asks for a clean shutdown. fd 3 is used because an asynchronous list's stdin is
  // /dev/null unless redirected explicitly.
  const wrapper =
    'exec 3<&0; "$0" "$@" & child=$!; ' +
    '(read _ <&3; kill -TERM $child 2>/dev/null) & watcher=$!; ' +
    'wait $child; rc=$?; kill $watcher 2>/dev/null; exit $rc'
  const proc = Bun.spawn(['sh', '-c', wrapper, binary, ...args], {
    stdin: 'pipe',
    stdout: 'pipe',
    stderr: 'pipe',
  })
  void pipeLines(proc.stdout, (line) => log.debug({ nats: line }, 'nats-server'))
  void pipeLines(proc.stderr, (line) => log.debug({ nats: line }, 'nats-server'))
  log.info({ url, storeDir, pid: proc.pid, binary }, 'starting embedded nats-server')

  let stopped = false
  let natsPid: number | null = null
  const stop = async () => {
    if (stopped) return
    stopped = true
    try {
      proc.stdin.end()
    } catch {}
    const exited = await Promise.race([proc.exited.then(() => true), Bun.sleep(10_000).then(() => false)])
    if (!exited) {
      log.warn('nats-server wrapper did not stop in 10 s; killing it')
      proc.kill('SIGKILL')
      await proc.exited
    }
    // A Ctrl-C reaches the wrapper shell too and can end it before nats-server has finished
    // (nats-server, an asynchronous child, ignores SIGINT): wait for the server itself.
    await waitForPidExit(natsPid, 10_000)
    log.info('embedded nats-server stopped')
  }

  try {
    await waitUntilReady(url, proc, opts.readyTimeoutMs ?? 15_000)
  } catch (err) {
    await stop()
    throw err
  }
  natsPid = readPid(pidFile)
  log.info({ url, natsPid }, 'embedded nats-server ready')
  const kill = () => {
    for (const pid of [natsPid, proc.pid]) {
      try {
        if (pid) process.kill(pid, 'SIGKILL')
      } catch {}
    }
  }
  return { url, stop, kill }
}

function readPid(path: string): number | null {
  try {
    const pid = Number(readFileSync(path, 'utf8').trim())
    return Number.isInteger(pid) && pid > 0 ? pid : null
  } catch {
    return null
  }
}

/** The arguments that tie a nats-server to its store: the store directory and the pid file in it. */
function storeArgs(storeDir: string, pidFile: string): string[] {
  return ['-js', '-sd', storeDir, '--pid', pidFile]
}

/**
 * Whether process `pid` is a nats-server started by startEmbeddedNats for `storeDir`: the program
 * is nats-server and its arguments hold storeArgs. A pid file outlives its server (a crash, a
 * reboot), and its pid may since belong to anything: another user's nats-server, or the one of
 * another data directory. Those are neither ours to refuse the start for nor ours to stop.
 */
function servesStore(pid: number, storeDir: string, pidFile: string): boolean {
  const own = storeArgs(storeDir, pidFile)
  const holds = (args: string[]) => args.some((_, i) => own.every((arg, j) => args[i + j] === arg))
  if (existsSync('/proc/self/cmdline')) {
    let argv: string[]
    try {
      argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')
    } catch (err) {
      // No such process; any other failure (hidepid) leaves us unsure: assume it is ours, erring
      // on the safe side (two servers on one store corrupt it).
      return (err as { code?: string }).code !== 'ENOENT'
    }
    // Not the `sh -c` wrapper, whose arguments hold the same words: the server itself.
    return basename(argv[0] ?? '') === 'nats-server' && holds(argv)
  }
  // No /proc (macOS): ps joins the arguments with spaces, so look for them in that form.
  if (!isAlive(pid)) return false
  const ps = Bun.spawnSync(['ps', '-o', 'args=', '-p', String(pid)])
  if (ps.exitCode !== 0) return true // alive but unreadable: assume it is ours, erring on the safe side
  const line = ps.stdout.toString().trim()
  return /(^|\/)nats-server(\s|$)/.test(line.split(' -')[0] ?? '') && line.includes(own.join(' '))
}

/** Waits for a process to exit: SIGTERM at once, SIGKILL if it is still there after `ms`. */
async function waitForPidExit(pid: number | null, ms: number): Promise<void> {
  if (!pid || !isAlive(pid)) return
  try {
    process.kill(pid, 'SIGTERM')
  } catch {}
  const deadline = Date.now() + ms
  while (isAlive(pid)) {
    if (Date.now() > deadline) {
      try {
        process.kill(pid, 'SIGKILL')
      } catch {}
      return
    }
    await Bun.sleep(50)
  }
}

/** Path of a runnable nats-server, installing it with apt-get when allowed (root + apt-get). */
async function findOrInstallNatsServer(log: Logger, allowInstall: boolean): Promise<string> {
  const found = findNatsServer()
  if (found) return found
  const isRoot = process.getuid?.() === 0
  const aptGet = Bun.which('apt-get')
  if (!allowInstall || !isRoot || !aptGet) throw new NatsServerMissing()
  log.warn('nats-server not found: running `apt-get update && apt-get install -y nats-server`')
  for (const cmd of [[aptGet, 'update'], [aptGet, 'install', '-y', 'nats-server']]) {
    const p = Bun.spawn(cmd, {
      stdout: 'inherit',
      stderr: 'inherit',
      env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    })
    const code = await p.exited
    if (code !== 0) {
      log.error({ cmd: cmd.join(' '), code }, 'installing nats-server failed')
      throw new NatsServerMissing()
    }
  }
  const installed = findNatsServer()
  if (!installed) throw new NatsServerMissing()
  log.info({ binary: installed }, 'nats-server installed')
  return installed
}

/** Path of the nats-server binary (PATH, then the usual install places), or null. */
export function findNatsServer(): string | null {
  const onPath = Bun.which('nats-server')
  if (onPath) return onPath
  for (const p of ['/usr/sbin/nats-server', '/usr/local/bin/nats-server', '/usr/bin/nats-server']) {
    if (existsSync(p)) return p
  }
  return null
}


/**
 * Resolves once a NATS server at `url` accepts connections (as `login`, when it requires one);
 * throws if `proc` exits first or on timeout.
 */
export async function waitUntilReady(url: string, proc: { exitCode: number | null }, timeoutMs: number, login?: { user: string; pass: string }): Promise<void> {
  const deadline = Date.now() + timeoutMs
  let lastError: unknown
  while (Date.now() < deadline) {
    if (proc.exitCode !== null) throw new Error(`nats-server exited with code ${proc.exitCode} while starting`)
    try {
      const nc = await connect({ servers: url, timeout: 1000, reconnect: false, ...login })
      await nc.close()
      return
    } catch (err) {
      lastError = err
      await Bun.sleep(100)
    }
  }
  throw new Error(`nats-server at ${url} not ready after ${timeoutMs} ms: ${String(lastError)}`)
}

async function pipeLines(stream: ReadableStream<Uint8Array>, onLine: (line: string) => void): Promise<void> {
  const decoder = new TextDecoder()
  let buffer = ''
  try {
    for await (const chunk of stream) {
      buffer += decoder.decode(chunk, { stream: true })
      let nl: number
      while ((nl = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, nl).trimEnd()
        buffer = buffer.slice(nl + 1)
        if (line) onLine(line)
      }
    }
  } catch {}
  if (buffer.trim()) onLine(buffer.trim())
}
