/**
 * `bun bench/edge-soak.ts [--repo=<path>] [--seconds=30] [--leaf-restart] [--keep]`: the outside check of the
 * README's "Running at the edge". A hub nats-server and an edge leaf server with the README's
 * configs (plus this machine's ports), a TCP proxy on the leaf link (core/testing/tcp-proxy.ts),
 * and Fanfare from a fresh `git clone` run as the README says: `FANFARE_EDGE_DOMAINS=edge-eu npm run
 * migrate` and workers, a hub API node, and an edge API node with `FANFARE_EDGE_DOMAIN`,
 * `FANFARE_HUB_DOMAIN` and `DATABASE_READ_URL`, on a database of their own. The machine's Postgres
 * and NATS are never stopped.
 *
 * Three lanes send score batches to the edge node and one to the hub node, resending a refused or
 * unanswered batch with the same ids; two raw WebSocket subscribers follow the board at the edge,
 * one at the hub. At 5 s the leaf link is cut; at 8 s the edge API node is SIGKILLed and started
 * again (still cut off); at 12 s a subscriber joins at the edge; at 20 s the link is restored. The
 * run exits non-zero if an acknowledged event is lost or applied twice, a key's scores go
 * backwards, a subscriber saw a silent gap or ends unequal to the REST board, or the edge refused
 * an event while cut off other than while its node was down. `--leaf-restart` instead SIGKILLs the
 * edge's leaf server at 5 s and starts it again (same store) at 10 s: the edge answers 503 while
 * it is down, then everything as after a cut.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import type { Subprocess } from 'bun'
import { tcpProxy } from '../core/testing/tcp-proxy'
import { findNatsServer, waitUntilReady } from '../scripts/embedded-nats'
import { freePort, spawnProc, waitReady, type Proc } from '../test/e2e/harness'
import { apiAt, configureBoard, type Api } from '../test/cluster/support'
import { boardSubscriber, cloneCheckout, interruptTeardowns, scratchDatabase, type BoardSubscriber, ingestLane, judge, newLedger } from './lib/soak'

const EDGE_LANES = 3
const CUT_AT_MS = 5_000
const EDGE_RESTART_AT_MS = 8_000
const LATE_SUBSCRIBER_AT_MS = 12_000
const RESTORE_AT_MS = 20_000

function parseOptions(argv: string[]) {
  const value = (name: string) => argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3)
  return { repo: resolve(value('repo') ?? resolve(import.meta.dir, '..')), seconds: Number(value('seconds') ?? 30), keep: argv.includes('--keep'), leafRestart: argv.includes('--leaf-restart') }
}

type Server = { url: string; start: () => Promise<void>; kill: () => Promise<void>; stop: () => Promise<void>; log: () => string }

/** A nats-server run with `conf` (written into `dir`); started again on the same config and store. */
function natsServer(dir: string, port: number, conf: string): Server {
  const binary = findNatsServer()
  if (!binary) throw new Error('nats-server is not installed')
  mkdirSync(dir, { recursive: true })
  writeFileSync(join(dir, 'nats-server.conf'), conf)
  let proc: Subprocess | undefined
  let log = ''
  const url = `nats://127.0.0.1:${port}`
  const end = async (signal: 'SIGTERM' | 'SIGKILL') => {
    const p = proc
    proc = undefined
    if (!p || p.exitCode !== null) return
    p.kill(signal)
    await p.exited
  }
  return {
    url,
    log: () => log,
    start: async () => {
      const started = Bun.spawn([binary, '-c', join(dir, 'nats-server.conf')], { stdout: 'ignore', stderr: 'pipe' })
      proc = started
      void (async () => {
        const decoder = new TextDecoder()
        for await (const chunk of started.stderr as ReadableStream<Uint8Array>) log = (log + decoder.decode(chunk)).slice(-50_000)
      })()
      await waitUntilReady(url, started, 15_000)
    },
    kill: () => end('SIGKILL'),
    stop: () => end('SIGTERM'),
  }
}

const teardowns = interruptTeardowns()

async function main() {
  const opts = parseOptions(process.argv.slice(2))
  if (!(opts.seconds >= 25)) throw new Error(`--seconds must be at least 25 (the link is restored at 20 s), got ${opts.seconds}`)
  const base = mkdtempSync(join(tmpdir(), 'fanfare-edge-soak-'))
  const checkout = await cloneCheckout(opts.repo, join(base, 'repo'))
  console.log(`edge soak of ${opts.repo} at ${checkout.commit} (clone in ${checkout.dir})`)
  const id = `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`
  const db = await scratchDatabase(`fanfare_edge_soak_${id}`)
  const dbUrl = db.url

  const [hubPort, leafPort, proxyPort, edgePort] = [freePort(), freePort(), freePort(), freePort()]
  const servers: Server[] = []
  const procs: Proc[] = []
  const subs: BoardSubscriber[] = []
  const proxy = tcpProxy({ port: proxyPort, target: { host: '127.0.0.1', port: leafPort } })
  const events: string[] = []
  let ok = false
  const teardown = async () => {
    teardowns.delete(teardown)
    for (const s of subs) s.stop()
    await Promise.all(procs.map((p) => p.stop('SIGKILL')))
    proxy.close()
    const logs = join(base, 'logs')
    mkdirSync(logs, { recursive: true })
    for (const p of procs) writeFileSync(join(logs, `${p.name}.log`), p.output())
    servers.forEach((s, i) => writeFileSync(join(logs, `${i === 0 ? 'hub' : 'edge'}-nats.log`), s.log()))
    await Promise.all(servers.map((s) => s.stop()))
    await db.drop().catch(() => {})
  }
  teardowns.add(teardown)
  try {
    // The README's configs; `advertise` keeps the proxy the leaf's one way to the hub (it would
    // otherwise learn the hub's own leafnode port and reconnect around the cut).
    servers.push(
      natsServer(
        join(base, 'hub'),
        hubPort,
        `host: 127.0.0.1\nport: ${hubPort}\njetstream { store_dir: ${JSON.stringify(join(base, 'hub'))}, domain: hub }\nleafnodes { host: 127.0.0.1, port: ${leafPort}, advertise: "127.0.0.1:${proxyPort}" }\n`,
      ),
    )
    servers.push(
      natsServer(
        join(base, 'edge'),
        edgePort,
        `host: 127.0.0.1\nport: ${edgePort}\njetstream { store_dir: ${JSON.stringify(join(base, 'edge'))}, domain: edge-eu }\n` +
          `leafnodes {\n  remotes: [ { url: "nats-leaf://127.0.0.1:${proxyPort}",\n               deny_imports: ["fanfare.ev.>"], deny_exports: ["fanfare.ev.>"] } ]\n}\n`,
      ),
    )
    for (const server of servers) await server.start()
    const common: Record<string, string> = {
      DATABASE_URL: dbUrl,
      HOST: '127.0.0.1',
      FANFARE_INGEST_TOKEN: `soak-ingest-${id}`,
      FANFARE_ADMIN_TOKEN: `soak-admin-${id}`,
      LOG_LEVEL: process.env.LOG_LEVEL ?? 'warn',
      FANFARE_KEY_OPS_PER_SECOND: process.env.FANFARE_KEY_OPS_PER_SECOND ?? '10000000',
    }
    const hubVars = { ...common, NATS_URL: servers[0].url, FANFARE_EDGE_DOMAINS: 'edge-eu' }
    const migrate = spawnProc('migrate', 'core/db/migrate-cli.ts', hubVars, checkout.dir)
    procs.push(migrate)
    if ((await migrate.proc.exited) !== 0) throw new Error(`migrate exited ${migrate.proc.exitCode}:\n${migrate.output()}`)
    const hubApiPort = freePort()
    const edgeApiPort = freePort()
    procs.push(spawnProc('workers', 'stream-workers/src/main.ts', hubVars, checkout.dir))
    procs.push(spawnProc('api-hub', 'api/src/main.ts', { ...hubVars, PORT: String(hubApiPort) }, checkout.dir))
    const edgeVars = { ...common, NATS_URL: servers[1].url, FANFARE_EDGE_DOMAIN: 'edge-eu', FANFARE_HUB_DOMAIN: 'hub', DATABASE_READ_URL: dbUrl, PORT: String(edgeApiPort) }
    let edgeApi = spawnProc('api-edge', 'api/src/main.ts', edgeVars, checkout.dir)
    procs.push(edgeApi)
    const hub = apiAt(hubApiPort, common)
    const edge = apiAt(edgeApiPort, common)
    for (const api of [hub, edge]) await waitReady(api.baseUrl, procs.filter((p) => p !== migrate), 60_000)
    await configureBoard(hub, 'soak', 'latest')
    const ws = (api: Api) => () => `${api.baseUrl.replace('http', 'ws')}/v1/ws`
    subs.push(boardSubscriber('edge subscriber 1', ws(edge)), boardSubscriber('edge subscriber 2', ws(edge)), boardSubscriber('hub subscriber', ws(hub)))
    await Promise.all(subs.map((s) => s.start()))

    const ledger = newLedger()
    const startedAt = Date.now()
    const endAt = startedAt + opts.seconds * 1000
    const at = (ms: number) => Bun.sleep(Math.max(0, startedAt + ms - Date.now()))
    const note = (what: string) => events.push(`${((Date.now() - startedAt) / 1000).toFixed(1)} s: ${what}`)
    const versions = () => subs.map((s) => `${s.name} ${s.version}`).join(', ')
    let edgeDown: [number, number] = [0, 0]
    const faults = (async () => {
      if (opts.leafRestart) {
        // The leaf server dies and comes back with its store (README/design: "as after a cut").
        await at(CUT_AT_MS)
        await servers[1].kill()
        note(`edge nats-server SIGKILLed; ${versions()}`)
        await at(CUT_AT_MS + 5_000)
        await servers[1].start()
        note(`edge nats-server started again; ${versions()}`)
        return
      }
      await at(CUT_AT_MS)
      proxy.cut()
      note(`leaf link cut; ${versions()}`)
      await at(EDGE_RESTART_AT_MS)
      edgeDown = [Date.now(), 0]
      await edgeApi.stop('SIGKILL')
      edgeApi = spawnProc('api-edge-2', 'api/src/main.ts', edgeVars, checkout.dir)
      procs.push(edgeApi)
      await waitReady(edge.baseUrl, [edgeApi], 60_000)
      edgeDown[1] = Date.now()
      note(`edge API node SIGKILLed and started again (ready after ${edgeDown[1] - edgeDown[0]} ms, still cut off)`)
      await at(LATE_SUBSCRIBER_AT_MS)
      const late = boardSubscriber('late edge subscriber', ws(edge))
      subs.push(late)
      await late.start()
      note(`a subscriber joined at the edge (version ${late.version})`)
      await at(RESTORE_AT_MS)
      note(`before restore: ${versions()}; ${ledger.acked} acknowledged`)
      proxy.restore()
      note('leaf link restored')
    })()
    // Each lane's players are its own: per key, one site's order.
    const lane = (api: Api, n: number) => ingestLane(api, id, n, startedAt, endAt, ledger)
    await Promise.all([faults, ...Array.from({ length: EDGE_LANES }, (_, n) => lane(edge, n)), lane(hub, EDGE_LANES)])
    const verdict = await judge(hub, dbUrl, ledger, subs, Date.now() - startedAt)
    // While its leaf server is down, the edge answers 503: expected then.
    const refused = Object.entries(ledger.answers).filter(([k]) => k !== '202' && !k.startsWith('0 connection') && !(opts.leafRestart && k.startsWith('503')))
    if (refused.length > 0) verdict.broken.push(`refusals other than a connection to the restarting edge node: ${refused.map(([k, v]) => `${k} x${v}`).join(', ')}`)
    const exited = procs.filter((p) => p !== migrate && p.name !== 'api-edge' && p.proc.exitCode !== null)
    if (exited.length > 0) verdict.broken.push(`processes exited: ${exited.map((p) => `${p.name} (${p.proc.exitCode})`).join(', ')}`)
    ok = verdict.broken.length === 0
    console.log(`\n=== ${ok ? 'OK' : 'BROKEN'}`)
    for (const line of [`load average ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}`, ...events, ...verdict.summary, ...verdict.notes.map((n) => `note: ${n}`), ...verdict.broken.map((b) => `BROKEN: ${b}`)])
      console.log(`  ${line}`)
  } finally {
    await teardown()
    if (ok && !opts.keep) rmSync(base, { recursive: true, force: true })
    else console.log(`\nlogs kept in ${base}/logs/`)
  }
  process.exit(ok ? 0 : 1)
}

await main()
