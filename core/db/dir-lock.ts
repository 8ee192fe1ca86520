import { closeSync, constants, ftruncateSync, openSync, readFileSync, writeSync } from 'node:fs'
import { StartFailure } from '../start-failure'

/**
 * A data directory (the embedded database's, the embedded nats-server's store) is held by another
 * process, named by its pid in the message (`in use by process <pid>`).
 */
export class DirInUse extends StartFailure {
  constructor(message: string) {
    super(message)
    this.name = 'DirInUse'
  }
}

/**
 * An exclusive lock on a data directory, for as long as this process lives: an advisory
 * `flock(LOCK_EX | LOCK_NB)` on a lock file, kept on an open descriptor. The kernel drops it when
 * the descriptor closes, so also when the process dies however it dies (SIGKILL, OOM, power cut
 * with a persistent volume): no stale lock to judge by a pid, which can be our own (PID 1 in a
 * container) or reused. Two opens of the file are two locks, so a second attempt in the same
 * process is refused too. Bun opens files close-on-exec, so child processes do not inherit it.
 *
 * The file is never deleted: a process that opened it before an unlink would lock a file no one
 * else sees. Its content (the holder's pid) is only for the error message.
 *
 * Returns the release function (idempotent). Throws DirInUse (`in use by process <pid>`) while another holder
 * has it, and a plain error on platforms without flock (neither Linux nor macOS).
 *
 * No npm package does this under Bun without a native build: fs-ext and os-lock compile with
 * node-gyp, and fs-native-extensions' prebuilt addon crashes Bun on a contended lock (it calls a
 * libuv function Bun lacks). So libc's flock is called through bun:ffi.
 */
export function acquireDirLock(path: string): () => void {
  const libc = loadLibc()
  const fd = openSync(path, constants.O_RDWR | constants.O_CREAT, 0o644)
  let result: number
  let errno = 0
  do {
    result = libc.flock(fd, LOCK_EX | LOCK_NB)
    if (result !== 0) errno = libc.errno()
  } while (result !== 0 && errno === EINTR)
  if (result !== 0) {
    const holder = readHolder(fd)
    closeSync(fd)
    if (errno === libc.EWOULDBLOCK) {
      throw new DirInUse(`the embedded database at ${path} is in use by process ${holder ?? '(unknown)'}; stop it first`)
    }
    throw new Error(`could not lock ${path}: flock failed with errno ${errno}`)
  }
  ftruncateSync(fd, 0)
  writeSync(fd, String(process.pid), 0)
  let released = false
  return () => {
    if (released) return
    released = true
    // Closing the descriptor releases the lock; the explicit unlock says so.
    libc.flock(fd, LOCK_UN)
    closeSync(fd)
  }
}

const LOCK_EX = 2
const LOCK_NB = 4
const LOCK_UN = 8
const EINTR = 4

type Libc = { flock: (fd: number, op: number) => number; errno: () => number; EWOULDBLOCK: number }
let libc: Libc | undefined

/** libc's flock and errno, per platform (errno is a thread-local read through its accessor). */
function loadLibc(): Libc {
  if (libc) return libc
  const platforms: Record<string, { names: string[]; errnoFn: string; EWOULDBLOCK: number }> = {
    linux: { names: ['libc.so.6', 'libc.musl-x86_64.so.1', 'libc.musl-aarch64.so.1'], errnoFn: '__errno_location', EWOULDBLOCK: 11 },
    darwin: { names: ['libSystem.B.dylib'], errnoFn: '__error', EWOULDBLOCK: 35 },
  }
  const p = platforms[process.platform]
  if (!p) {
    throw new Error(
      `the embedded database needs flock() to lock its directory, which Fanfare uses on Linux and macOS only (this is ${process.platform}); set DATABASE_URL to a Postgres server instead`,
    )
  }
  // Loaded lazily: bun:ffi is only needed by the embedded mode.
  const { dlopen, FFIType, read } = require('bun:ffi') as typeof import('bun:ffi')
  let lastError: unknown
  for (const name of p.names) {
    try {
      const lib = dlopen(name, {
        flock: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
        [p.errnoFn]: { args: [], returns: FFIType.ptr },
      })
      const errnoAt = lib.symbols[p.errnoFn] as () => number
      libc = {
        flock: lib.symbols.flock as (fd: number, op: number) => number,
        errno: () => read.i32(errnoAt() as never, 0),
        EWOULDBLOCK: p.EWOULDBLOCK,
      }
      return libc
    } catch (err) {
      lastError = err
    }
  }
  throw new Error(`cannot load the C library (${p.names.join(', ')}) to lock the embedded database: ${String(lastError)}`)
}

function readHolder(fd: number): number | undefined {
  try {
    const pid = Number(readFileSync(fd, 'utf8').trim())
    return Number.isInteger(pid) && pid > 0 ? pid : undefined
  } catch {
    return undefined
  }
}
