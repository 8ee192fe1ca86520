import { mintUserToken } from '../../api/src/auth/mint'
import { createTestEnv, type TestEnv } from '../../core/testing/env'
import { freePort, spawnProc, waitReady, type Proc } from '../e2e/harness'

/** Fanfare as real processes: API nodes and workers on their own database and stream prefix. */
export type Deployment = {
  env: TestEnv
  /** The API nodes' base URLs (http://127.0.0.1:<port>), by index. */
  urls: string[]
  procs: Proc[]
  /** Each API node's process, by index. */
  apis: Proc[]
  /** A user token signed with the deployment's secret. */
  token: (sub: string, claims?: { ttlSeconds?: number; roles?: string[]; name?: string; jti?: string; channels?: string[] }) => Promise<string>
  /** A REST call with a bearer token (the ingest token by default); JSON body in and out. */
  call: (method: string, path: string, body?: unknown, opts?: { node?: number; token?: string }) => Promise<{ status: number; json: any }>
  stop: () => Promise<void>
}

export async function startDeployment(opts: { apis: number; workers: number; vars?: Record<string, string> }): Promise<Deployment> {
  const env = await createTestEnv({ HOST: '127.0.0.1', ...opts.vars })
  const procs: Proc[] = []
  const apis: Proc[] = []
  const urls: string[] = []
  for (let i = 0; i < opts.apis; i++) {
    const port = freePort()
    urls.push(`http://127.0.0.1:${port}`)
    const p = spawnProc(`api-${i}`, 'api/src/main.ts', { ...env.vars, PORT: String(port) })
    apis.push(p)
    procs.push(p)
  }
  for (let i = 0; i < opts.workers; i++) procs.push(spawnProc(`worker-${i}`, 'stream-workers/src/main.ts', env.vars))
  try {
    for (const url of urls) await waitReady(url, procs)
  } catch (err) {
    await Promise.all(procs.map((p) => p.stop('SIGKILL')))
    await env.cleanup()
    throw err
  }
  return {
    env,
    urls,
    procs,
    apis,
    token: (sub, claims = {}) => mintUserToken(env.vars.FANFARE_JWT_SECRET, { sub, ...claims }),
    call: async (method, path, body, o = {}) => {
      const res = await fetch(`${urls[o.node ?? 0]}${path}`, {
        method,
        headers: { 'content-type': 'application/json', authorization: `Bearer ${o.token ?? env.vars.FANFARE_INGEST_TOKEN}` },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      })
      return { status: res.status, json: await res.json().catch(() => null) }
    },
    stop: async () => {
      await Promise.all(procs.map((p) => p.stop('SIGKILL')))
      await env.cleanup()
    },
  }
}
