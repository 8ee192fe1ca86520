/** Small process helpers shared by the embedded runners (PGlite lock, private nats-server). */

/** True when a process with this pid exists (signal 0 checks without sending anything). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/**
 * A TCP port on 127.0.0.1 that was free a moment ago (bound on :0, then released), none of
 * `avoid`: the kernel may hand back a port just released, e.g. the PORT a process checked is free
 * and is about to listen on.
 */
export function freePort(avoid: readonly number[] = []): number {
  for (;;) {
    const server = Bun.serve({ port: 0, hostname: '127.0.0.1', fetch: () => new Response() })
    const port = server.port!
    server.stop(true)
    if (!avoid.includes(port)) return port
  }
}
