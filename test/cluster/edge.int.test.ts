import { afterAll, describe, expect, test } from 'bun:test'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { AckPolicy, jetstreamManager } from '@nats-io/jetstream'
import postgres from 'postgres'
import { connect, createInbox } from '@nats-io/transport-node'
import { loadConfig } from '../../core/config'
import { connectNats, deploymentStreams, ensureStreams, recordChangeFormat, topology } from '../../core/nats'
import { upgradeNats } from '../../core/upgrade'
import { createTestEnv, type TestEnv } from '../../core/testing/env'
import { freePort, spawnProc, until, waitReady, WsClient, type Proc } from '../e2e/harness'
import { privateNats, type PrivateNats } from './private-nats'
import { apiAt, BoardView, configureBoard, configuredVersion, diff, postEvents, readModel, scoreEvent, stopCleanly, type ScoreEvent } from './support'
import { tcpProxy, type TcpProxy } from '../../core/testing/tcp-proxy'

const CLIENTS = 3
const PLAYERS = 20
const EDGE = 'edge-t'

/** What a test started, for its teardown: processes, nats-servers (stopped last first), proxies. */
type Started = { procs: Proc[]; servers: PrivateNats[]; proxies: TcpProxy[] }

async function stopAll(started: Started) {
  await Promise.all(started.procs.map((p) => p.stop('SIGKILL')))
  for (const s of [...started.servers].reverse()) await s.stop()
  for (const p of started.proxies) p.close()
}

/**
 * A hub and an edge site: the hub's nats-server (JetStream domain `hub`) and a worker; the edge's
 * leaf nats-server (domain EDGE) linked to the hub through `leafLink`, a TCP proxy the test cuts.
 * Resolves once the worker made the hub's streams, which the edge's change-stream mirrors read
 * from. Each part goes into `started` as it starts, for the test's teardown.
 */
async function startSite(env: TestEnv, dir: string, started: Started) {
  const leafPort = freePort()
  const leafLink = tcpProxy({ port: freePort(), target: { host: '127.0.0.1', port: leafPort } })
  started.proxies.push(leafLink)
  const hub = privateNats({ port: freePort(), storeDir: join(dir, 'hub'), domain: 'hub', leafPort, leafAdvertise: `127.0.0.1:${leafLink.port}` })
  // The link must not carry event subjects either way: each side's event stream would store the
  // other's events too (README "Running at the edge").
  const edge = privateNats({ port: freePort(), storeDir: join(dir, 'edge'), domain: EDGE, remote: { url: `nats-leaf://127.0.0.1:${leafLink.port}`, deny: [`${env.config.FANFARE_SUBJECT_PREFIX}.ev.>`] } })
  started.servers.push(hub, edge)
  await hub.start()
  await edge.start()

  const hubVars: Record<string, string> = { ...env.vars, NATS_URL: hub.url, FANFARE_EDGE_DOMAINS: EDGE }
  const worker = spawnProc('worker', 'stream-workers/src/main.ts', hubVars)
  started.procs.push(worker)
  const hubNc = await connect({ servers: hub.url })
  const hubJsm = await jetstreamManager(hubNc)
  await until('the hub streams', async () => {
    if (worker.proc.exitCode !== null) throw new Error(`worker exited:\n${worker.output().slice(-3000)}`)
    return (await hubJsm.streams.info(env.config.FANFARE_STREAM).catch(() => undefined))?.config.sources?.length === 1
  }, 20_000, 200)
  await hubNc.close()
  return { hub, edge, leafLink, hubVars, worker }
}

/**
 * An edge site cut off from its hub under load. The hub: a nats-server (JetStream domain `hub`)
 * and a worker. The edge: a leaf nats-server (domain `edge-t`) linked to the hub through a TCP
 * proxy the test cuts, and an API node where clients publish and subscribe. While cut, the edge
 * keeps answering 202 (stored at the edge) and de-duplicates a resent batch; once the link is back
 * every acknowledged event is applied exactly once, each player's scores in the order sent, and
 * every edge subscriber holds the read model's board, having seen every version in order (or a
 * resync snapshot), never a silent gap.
 */
describe('edge site (NATS leaf node)', () => {
  let env: TestEnv | undefined
  const started: Started = { procs: [], servers: [], proxies: [] }
  const dir = mkdtempSync(join(tmpdir(), 'fanfare-edge-'))
  afterAll(async () => {
    await stopAll(started)
    await env?.cleanup()
    rmSync(dir, { recursive: true, force: true })
  })

  test('a cut link loses, repeats and reorders nothing; edge subscribers see every change', async () => {
    // Two change messages kept per subject: with live batches a kind's runs share its partitions'
    // subjects (`_batch.<p>`), so of the batches a board gets at the hub while the edge is cut off
    // most are gone when the link returns (its subscribers at the edge must get a resync). With ten
    // kept and ten batches (this test's figures before live batches), CI saw every one of them kept.
    env = await createTestEnv({ FANFARE_PARTITIONS: '4', LOG_LEVEL: 'info', FANFARE_HISTORY_SIZE_LEADERBOARD: '2' })
    const { hub, edge, leafLink: proxy, hubVars, worker } = await startSite(env, dir, started)
    const hubPort = freePort()
    const hubApiProc = spawnProc('hub-api', 'api/src/main.ts', { ...hubVars, PORT: String(hubPort), HOST: '127.0.0.1' })
    started.procs.push(hubApiProc)
    const hubApi = apiAt(hubPort, hubVars)

    const port = freePort()
    // Snapshots and REST reads through DATABASE_READ_URL: the same database here, under another name.
    const readUrl = new URL(env.vars.DATABASE_URL)
    readUrl.searchParams.set('application_name', 'fanfare-edge-reads')
    const edgeVars: Record<string, string> = {
      ...env.vars,
      NATS_URL: edge.url,
      DATABASE_READ_URL: readUrl.toString(),
      FANFARE_EDGE_DOMAIN: EDGE,
      FANFARE_HUB_DOMAIN: 'hub',
      PORT: String(port),
      HOST: '127.0.0.1',
    }
    const apiProc = spawnProc('edge-api', 'api/src/main.ts', edgeVars)
    started.procs.push(apiProc)
    const api = apiAt(port, edgeVars)
    await waitReady(api.baseUrl, started.procs)
    await waitReady(hubApi.baseUrl, started.procs)
    // What another edge node starting (or this one restarting) does: the mirrors as they are.
    const edgeNc = await connect({ servers: edge.url })
    await ensureStreams(edgeNc, loadConfig(edgeVars))
    await edgeNc.close()
    const run = Math.random().toString(36).slice(2, 8)
    const board = `edge_${run}`
    const channel = `leaderboard:${board}`
    await configureBoard(api, board, 'latest')
    // Admin routes on the hub's JetStream (rebuild jobs, worker leases) say where to go.
    const workersAtEdge = await fetch(`${api.baseUrl}/admin/workers`, { headers: { authorization: `Bearer ${api.adminToken}` } })
    expect(workersAtEdge.status).toBe(409)
    expect((await workersAtEdge.json()).error.code).toBe('hub_only')
    // A board scored at the hub, watched at the edge.
    const hubBoard = `hub_${run}`
    const hubChannel = `leaderboard:${hubBoard}`
    await configureBoard(hubApi, hubBoard, 'latest')

    const views: BoardView[] = []
    const hubViews: BoardView[] = []
    for (let i = 0; i < CLIENTS; i++) {
      const client = await WsClient.open(`ws://127.0.0.1:${port}/v1/ws`)
      client.send({ op: 'subscribe', ref: 's', channel })
      client.send({ op: 'subscribe', ref: 'h', channel: hubChannel })
      views.push(new BoardView(client, { increasing: true }))
      hubViews.push(new BoardView(client, { increasing: true }))
    }
    await until('every client has its snapshots', () => views.every((v) => v.client.of(channel).length > 0 && v.client.of(hubChannel).length > 0))
    // Those snapshots were read through DATABASE_READ_URL.
    const pg = postgres(env.vars.DATABASE_URL, { max: 1, onnotice: () => {} })
    const readers = await pg`SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'fanfare-edge-reads'`
    await pg.end()
    expect(readers[0].n).toBeGreaterThan(0)

    // The switch to live batches (`npm run migrate -- --live-batches` at the hub) asks the edge too:
    // the edge node's change feed (this version) is no older node; a stranger following the edge's
    // mirror is named, with its domain. (Nothing to switch here: new streams record live batches.)
    const hubConfig = loadConfig(hubVars)
    const hubAdmin = await connect({ servers: hub.url })
    const edgeAdmin = await connect({ servers: edge.url })
    try {
      expect(await recordChangeFormat(hubAdmin, hubConfig, { settleMs: 0 })).toEqual([])
      const inbox = createInbox()
      const follower = edgeAdmin.subscribe(inbox)
      const mirror = topology(hubConfig).changeStreams.leaderboard
      const stranger = await (await jetstreamManager(edgeAdmin)).consumers.add(mirror, { deliver_subject: inbox, ack_policy: AckPolicy.None })
      expect(await recordChangeFormat(hubAdmin, hubConfig, { settleMs: 0 }).then(() => 'switched', (err: Error) => err.message)).toContain(`${EDGE}:${mirror}/${stranger.name}`)
      follower.unsubscribe()
    } finally {
      await hubAdmin.close()
      await edgeAdmin.close()
    }

    // Every player's score rises with each batch: `latest` makes every event a change (the
    // channel's version counts applications) and a lower score after a higher one is disorder.
    const sent: ScoreEvent[][] = []
    const refused: { status: number; body: unknown }[] = []
    let sending = true
    const sender = (async () => {
      for (let n = 0; sending; n++) {
        const batch = Array.from({ length: PLAYERS }, (_, p) => scoreEvent(`${run}-${n}-${p}`, board, `p${p}`, n * 100 + p))
        const res = await postEvents(api, batch, 10_000)
        if (res.status === 202) sent.push(batch)
        else refused.push(res)
        await Bun.sleep(40)
      }
    })()

    const catchUpAll = () => views.every((v) => v.catchUp(channel)) && hubViews.every((v) => v.catchUp(hubChannel))
    await until('updates flowing through the hub to the edge', () => catchUpAll() && views.every((v) => v.version >= 100), 20_000)

    // One event id sent to the hub and to the edge: two events (each site de-duplicates its own),
    // and above all no stalled link: on nats-server 2.9 a sourced message the hub took for a
    // duplicate would block the edge's events for the whole de-duplication window.
    const twice = [scoreEvent(`${run}-twice`, hubBoard, 'twice', 1)]
    expect((await postEvents(hubApi, twice)).status).toBe(202)
    expect((await postEvents(api, [{ ...twice[0], data: { ...twice[0].data, score: 2 } }])).status).toBe(202)
    const early = readModel(env.vars.DATABASE_URL)
    await until('the edge copy applied too', async () => (await early.version(hubChannel)) === configuredVersion(2), 10_000).finally(() => early.close())

    proxy.cut()
    const cutAt = sent.length
    // What was in flight across the link settles; from then on nothing reaches the hub.
    await Bun.sleep(1000)
    catchUpAll()
    const versionAfterCut = views[0].version
    await Bun.sleep(3000)
    catchUpAll()
    const versionEndOfCut = views[0].version
    // Meanwhile at the hub: 60 changes to its board (3 per batch), more than its history keeps.
    // Each batch applied before the next is sent, so each is a worker batch of its own: 20 messages
    // on its partition's batch subject (20 runs on the channel's subject on a deployment from
    // before live batches), where the stream keeps 2: the mirror misses some when the link returns.
    const hubSent: ScoreEvent[][] = []
    const hubRm = readModel(env.vars.DATABASE_URL)
    try {
      for (let n = 0; n < 20; n++) {
        const batch = Array.from({ length: 3 }, (_, p) => scoreEvent(`${run}-h${n}-${p}`, hubBoard, `p${p}`, n * 100 + p))
        const res = await postEvents(hubApi, batch)
        if (res.status !== 202) throw new Error(`hub ingest: ${res.status} ${JSON.stringify(res.body)}`)
        hubSent.push(batch)
        const applied = configuredVersion(2 + hubSent.length * 3)
        await until(`the hub board at version ${applied}`, async () => (await hubRm.version(hubChannel)) === applied, 10_000, 20)
      }
    } finally {
      await hubRm.close()
    }
    // A client resending a stored batch (its answer was lost) to the cut-off edge: de-duplicated there.
    const resent = await postEvents(api, sent[cutAt + 1])
    const readyWhileCut = (await fetch(`${api.baseUrl}/readyz`)).status
    const sentWhileCut = sent.length - cutAt
    proxy.restore()
    await Bun.sleep(3000)
    sending = false
    await sender

    expect(refused).toEqual([])
    expect(sentWhileCut).toBeGreaterThan(20)
    expect(resent.status).toBe(202)
    expect(resent.body.results.every((r: { duplicate: boolean }) => r.duplicate)).toBe(true)
    expect(readyWhileCut).toBe(200)
    // The cut was real: events stored at the edge meanwhile waited for the link.
    expect(versionEndOfCut).toBe(versionAfterCut)

    const acknowledged = sent.length * PLAYERS
    const versionOf = configuredVersion(acknowledged)
    const oracle = new Map(sent[sent.length - 1].map((e) => [e.data.player, e.data.score]))
    const rm = readModel(env.vars.DATABASE_URL)
    try {
      // Exactly once: one version per acknowledged event (each one a change), no more, no fewer,
      // after the restart that configuring the board made.
      await until(`the read model at version ${versionOf}`, async () => (await rm.version(channel)) >= versionOf, 40_000, 500).catch(async (err) => {
        throw new Error(`${(err as Error).message}: at ${await rm.version(channel)}\nworker:\n${worker.output().slice(-2000)}\nhub:\n${hub.log().slice(-2000)}`)
      })
      await Bun.sleep(1000)
      expect(await rm.version(channel)).toBe(versionOf)
      expect(diff(await rm.scores(board), oracle)).toEqual([])
      expect(await rm.deadLetters()).toBe(0)
      await until(`every edge subscriber at version ${versionOf}`, () => catchUpAll() && views.every((v) => v.version === versionOf), 20_000).catch((err) => {
        const at = views.map((v) => `${v.version} (closed: ${JSON.stringify(v.client.closed)})`).join(', ')
        throw new Error(`${(err as Error).message}; subscribers at ${at}\nedge api:\n${apiProc.output().slice(-3000)}`)
      })
      for (const v of views) expect(diff(v.board, oracle)).toEqual([])
      // The hub's board: its changes from the cut were mostly gone from history when the link
      // returned; every edge subscriber got a resync to the read model, never a silent gap.
      const hubVersion = configuredVersion(2 + hubSent.length * 3)
      const hubOracle = new Map([['twice', 2], ...hubSent[hubSent.length - 1].map((e): [string, number] => [e.data.player, e.data.score])])
      expect(await rm.version(hubChannel)).toBe(hubVersion)
      await until(`every edge subscriber of the hub board at version ${hubVersion}`, () => catchUpAll() && hubViews.every((v) => v.version === hubVersion), 20_000)
      for (const v of hubViews) {
        expect(diff(v.board, hubOracle)).toEqual([])
        expect(v.resyncs).toBeGreaterThan(0)
      }
      console.log(`edge: ${acknowledged} events acknowledged (${sentWhileCut * PLAYERS} while cut), subscribers resynced ${views.map((v) => v.resyncs).join('/')} times (hub board: ${hubViews.map((v) => v.resyncs).join('/')})`)
    } finally {
      await rm.close()
    }
    for (const v of views) v.client.close()
    await stopCleanly(apiProc, hubApiProc, worker)
  }, 120_000)
})

/**
 * `npm run migrate` at an edge (the leaf server's NATS_URL, FANFARE_EDGE_DOMAIN): the one writer of
 * the edge's stream settings, as at the hub (README "Running at the edge"), say a longer
 * FANFARE_EVENT_RETENTION_MS. It sets the edge's event stream and mirrors, and creates no KV
 * bucket there: leases and rebuild jobs are the hub's (it used to create both in the edge's domain).
 */
describe('the upgrade command at an edge site', () => {
  const dir = mkdtempSync(join(tmpdir(), 'fanfare-edge-upgrade-'))
  let hub: PrivateNats | undefined
  let edge: PrivateNats | undefined
  afterAll(async () => {
    await edge?.stop()
    await hub?.stop()
    rmSync(dir, { recursive: true, force: true })
  })

  test("sets the edge's streams and leaves the buckets to the hub", async () => {
    const id = Math.random().toString(36).slice(2, 8)
    const base = { FANFARE_STREAM: `EU_${id}`, FANFARE_SUBJECT_PREFIX: `eu_${id}` }
    const leafPort = freePort()
    hub = privateNats({ port: freePort(), storeDir: join(dir, 'hub'), domain: 'hub', leafPort })
    edge = privateNats({ port: freePort(), storeDir: join(dir, 'edge'), domain: EDGE, remote: { url: `nats-leaf://127.0.0.1:${leafPort}`, deny: [`eu_${id}.ev.>`] } })
    await hub.start()
    await edge.start()
    const hubNc = await connectNats(hub.url, 'edge-upgrade-hub')
    const edgeNc = await connectNats(edge.url, 'edge-upgrade-edge')
    try {
      await upgradeNats(hubNc, loadConfig({ ...base, FANFARE_EDGE_DOMAINS: EDGE }))
      const edgeConfig = loadConfig({ ...base, FANFARE_EDGE_DOMAIN: EDGE, FANFARE_HUB_DOMAIN: 'hub' })
      // The edge's first node created its streams with the default retention (forever).
      await ensureStreams(edgeNc, edgeConfig)
      const week = 7 * 24 * 3600 * 1000
      await upgradeNats(edgeNc, { ...edgeConfig, FANFARE_EVENT_RETENTION_MS: week })
      const edgeJsm = await jetstreamManager(edgeNc)
      expect((await edgeJsm.streams.info(base.FANFARE_STREAM)).config.max_age).toBe(week * 1_000_000)
      const names: string[] = []
      for await (const name of edgeJsm.streams.names()) names.push(name)
      expect(names.filter((n) => n.startsWith('KV_'))).toEqual([])
      expect(names.sort()).toEqual(deploymentStreams(topology(edgeConfig)).filter((n) => !n.startsWith('KV_')).sort())
    } finally {
      await edgeNc.close()
      await hubNc.close()
    }
  }, 60_000)
})

/**
 * Live batches at an edge: the mirrors hold live batches (one message per partition), not
 * a channel's runs, so the edge's resumes read change_history through DATABASE_URL, the hub's
 * primary, which a cut of the site's link may take away too (here a second proxy, on the edge
 * node's DATABASE_URL; its DATABASE_READ_URL, the site's replica, stays). Clients that left the
 * board resume at the edge during the cut: with the leaf link cut and Postgres reachable, from
 * history (`subscribed`, every missed update); with Postgres stalled, once it answers again;
 * with Postgres cut too, with a `resync` snapshot (from the replica). After the link returns, every client reaches the read model's board, every
 * update after its snapshot or resume point in order: never a silent gap.
 */
describe('resumes at an edge site with live batches', () => {
  let env: TestEnv | undefined
  const started: Started = { procs: [], servers: [], proxies: [] }
  const clients: WsClient[] = []
  const dir = mkdtempSync(join(tmpdir(), 'fanfare-edge-live-'))
  afterAll(async () => {
    for (const c of clients) c.close()
    await stopAll(started)
    await env?.cleanup()
    rmSync(dir, { recursive: true, force: true })
  })

  /** One client's frames of `channel`, checked: the version and board it holds, and how each subscribe was answered. */
  const follow = (client: WsClient, channel: string) => {
    let version = -1
    const board = new Map<string, number>()
    const answers: string[] = []
    for (const f of client.frames.filter((f) => f.channel === channel)) {
      if (f.op === 'snapshot') {
        answers.push(f.resync ? 'resync' : 'snapshot')
        board.clear()
        for (const e of f.data.entries) board.set(e.player, e.score)
        version = f.version
      } else if (f.op === 'subscribed') {
        answers.push(f.recovered ? 'recovered' : 'subscribed')
        version = f.version
      } else if (f.op === 'update') {
        if (f.version !== version + 1) throw new Error(`update ${f.version} after ${version}: a gap or a repeat`)
        board.set(f.data.player, f.data.score)
        version = f.version
      }
    }
    return { version, board, answers }
  }

  test('a resume during a cut is served from Postgres history, or answered with a resync when Postgres is cut too', async () => {
    env = await createTestEnv({ FANFARE_PARTITIONS: '4', LOG_LEVEL: 'info' })
    const { edge, leafLink, worker } = await startSite(env, dir, started)
    const pgUrl = new URL(env.vars.DATABASE_URL)
    const pgLink = tcpProxy({ port: freePort(), target: { host: pgUrl.hostname, port: Number(pgUrl.port || 5432) } })
    started.proxies.push(pgLink)

    const primary = new URL(env.vars.DATABASE_URL)
    primary.port = String(pgLink.port)
    const port = freePort()
    const edgeVars: Record<string, string> = {
      ...env.vars,
      NATS_URL: edge.url,
      DATABASE_URL: primary.toString(),
      DATABASE_READ_URL: env.vars.DATABASE_URL,
      FANFARE_EDGE_DOMAIN: EDGE,
      FANFARE_HUB_DOMAIN: 'hub',
      PORT: String(port),
      HOST: '127.0.0.1',
    }
    const apiProc = spawnProc('edge-api', 'api/src/main.ts', edgeVars)
    started.procs.push(apiProc)
    const api = apiAt(port, edgeVars)
    await waitReady(api.baseUrl, started.procs)
    const board = `live_${Math.random().toString(36).slice(2, 8)}`
    const channel = `leaderboard:${board}`
    await configureBoard(api, board, 'latest')

    const ws = `ws://127.0.0.1:${port}/v1/ws`
    const open = async () => {
      const c = await WsClient.open(ws)
      clients.push(c)
      return c
    }
    const follower = await open()
    const leavers = [await open(), await open()]
    for (const c of [follower, ...leavers]) c.send({ op: 'subscribe', ref: 's', channel })
    let batches = 0
    const oracle = new Map<string, number>()
    // One batch of 10 changes at the edge, then waits until `clients` hold it (applied at the hub, back through the mirror).
    const send = async (clients: WsClient[]) => {
      const n = batches++
      const batch = Array.from({ length: 10 }, (_, p) => scoreEvent(`${board}-${n}-${p}`, board, `p${p}`, n * 100 + p))
      const res = await postEvents(api, batch)
      if (res.status !== 202) throw new Error(`edge ingest: ${res.status} ${JSON.stringify(res.body)}`)
      for (const e of batch) oracle.set(e.data.player, e.data.score)
      const version = configuredVersion(batches * 10)
      await until(`batch ${n} at version ${version}`, () => clients.every((c) => follow(c, channel).version === version), 20_000)
    }
    for (let i = 0; i < 5; i++) await send([follower, ...leavers])
    const left = follow(leavers[0], channel).version
    const epoch = leavers[0].of(channel)[0].epoch
    for (const c of leavers) c.close()
    // Missed by the leavers: 50 changes in 5 batches, each a live batch on the mirrors, not runs on the channel's subject.
    for (let i = 0; i < 5; i++) await send([follower])
    const before = follow(follower, channel).version

    leafLink.cut()
    await Bun.sleep(500)
    // Leaf link cut, Postgres reachable: served from change_history.
    const fromHistory = await open()
    fromHistory.send({ op: 'subscribe', ref: 'r', channel, since: left, epoch })
    await until('the first resume answered', () => follow(fromHistory, channel).version === before, 10_000).catch((err) => {
      throw new Error(`${(err as Error).message}: ${JSON.stringify(fromHistory.frames.slice(0, 3))}\nedge api:\n${apiProc.output().slice(-3000)}`)
    })
    expect(follow(fromHistory, channel).answers).toEqual(['recovered'])

    // Postgres stalled (packets silently dropped): a resume waits for its history read, and is
    // served from it when the path returns.
    pgLink.stall()
    const stalled = await open()
    stalled.send({ op: 'subscribe', ref: 'r', channel, since: left, epoch })
    await Bun.sleep(2000)
    expect(follow(stalled, channel).answers).toEqual([])
    pgLink.restore()
    await until('the stalled resume answered', () => follow(stalled, channel).version === before, 20_000)
    expect(follow(stalled, channel).answers).toEqual(['recovered'])

    // Postgres (the primary, the history's source) cut too: a resume cannot read history.
    pgLink.cut()
    const withoutHistory = await open()
    withoutHistory.send({ op: 'subscribe', ref: 'r', channel, since: left, epoch })
    await until('the second resume answered', () => follow(withoutHistory, channel).version >= left, 20_000).catch((err) => {
      throw new Error(`${(err as Error).message}: ${JSON.stringify(withoutHistory.frames.slice(0, 3))}\nedge api:\n${apiProc.output().slice(-3000)}`)
    })
    expect(follow(withoutHistory, channel)).toMatchObject({ answers: ['resync'], version: before })

    // Events sent at the edge while cut off wait there for the link.
    for (let i = 0; i < 3; i++) {
      const n = batches++
      const batch = Array.from({ length: 10 }, (_, p) => scoreEvent(`${board}-${n}-${p}`, board, `p${p}`, n * 100 + p))
      const res = await postEvents(api, batch)
      if (res.status !== 202) throw new Error(`edge ingest while cut: ${res.status} ${JSON.stringify(res.body)}`)
      for (const e of batch) oracle.set(e.data.player, e.data.score)
    }
    await Bun.sleep(1000)
    expect(follow(follower, channel).version).toBe(before)
    pgLink.restore()
    leafLink.restore()

    const final = configuredVersion(batches * 10)
    const rm = readModel(env.vars.DATABASE_URL)
    try {
      await until(`the read model at version ${final}`, async () => (await rm.version(channel)) === final, 40_000, 200)
      expect(diff(await rm.scores(board), oracle)).toEqual([])
    } finally {
      await rm.close()
    }
    const holders = [follower, fromHistory, stalled, withoutHistory]
    await until(`every client at version ${final}`, () => holders.every((c) => follow(c, channel).version === final), 30_000).catch((err) => {
      throw new Error(`${(err as Error).message}: at ${holders.map((c) => follow(c, channel).version).join(', ')}\nedge api:\n${apiProc.output().slice(-3000)}`)
    })
    for (const c of holders) expect(diff(follow(c, channel).board, oracle)).toEqual([])
    await stopCleanly(apiProc, worker)
  }, 120_000)
})
