import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { jetstreamManager } from '@nats-io/jetstream'
import { connect } from '@nats-io/transport-node'
import { topology } from '../../core/nats'
import type { TestEnv } from '../../core/testing/env'
import { until } from '../../core/testing/wait'
import { createClient, FanfareError } from '../../client/src'
import { freePort, runUntilExit, spawnProc, waitReady, WsClient, type Proc } from '../e2e/harness'
import { nodeVars, postEvents, privateNatsDeployment, scoreEvent, startNodes, stopCleanly, type PrivateNatsDeployment } from '../cluster/support'
import type { PrivateNats } from '../cluster/private-nats'

/**
 * A NATS user whose permissions lack subjects Fanfare publishes to. nats-server drops such a
 * publish and only tells the connection asynchronously: an API node was ready and answered every
 * event of a denied type 503 `unavailable` after the 5 s publish timeout, and a worker denied the
 * change subjects applied events while subscribers got no update. Both must refuse to start,
 * naming the subjects. The check stores nothing.
 */
let d: PrivateNatsDeployment | undefined
let env: TestEnv
let nats: PrivateNats
const procs: Proc[] = []
const login = (user: string) => nats.url.replace('nats://', `nats://${user}:pw@`)
const users: { user: string; password: string; permissions?: string }[] = [
  { user: 'all', password: 'pw' },
  { user: 'nochat', password: 'pw', permissions: '{ publish: { deny: ["*.ev.*.chat.>"] } }' },
  { user: 'nochanges', password: 'pw', permissions: '{ publish: { deny: ["*.changes.>"] } }' },
  { user: 'nocontrol', password: 'pw', permissions: '{ publish: { deny: ["*.control.>"] } }' },
  { user: 'nosubcontrol', password: 'pw', permissions: '{ subscribe: { deny: ["*.control.>"] } }' },
  { user: 'noinbox', password: 'pw', permissions: '{ subscribe: { deny: ["_INBOX.>"] } }' },
  { user: 'noadvisory', password: 'pw', permissions: '{ subscribe: { deny: ["$JS.EVENT.ADVISORY.>"] } }' },
  { user: 'nosubreplay', password: 'pw', permissions: '{ subscribe: { deny: ["*.admin.replay.>"] } }' },
  // Users whose permissions the tests narrow (and widen again) while nodes run.
  { user: 'narrowed', password: 'pw' },
  { user: 'watched', password: 'pw' },
  { user: 'advisories', password: 'pw' },
  { user: 'replayer', password: 'pw' },
  { user: 'inboxless', password: 'pw' },
  { user: 'muted', password: 'pw' },
]
/**
 * Sets `user`'s permissions (none: all) and has the running server reload its config, as an
 * operator does with `nats-server --signal reload`; every other user keeps its own.
 */
const setPermissions = (user: string, permissions?: string) => {
  const u = users.find((x) => x.user === user)!
  if (permissions) u.permissions = permissions
  else delete u.permissions
  return nats.reload({ users })
}

beforeAll(async () => {
  d = await privateNatsDeployment('nats-perms', { FANFARE_PARTITIONS: '2' }, { users })
  ;({ env, nats } = d)
})
afterAll(async () => {
  await Promise.all(procs.map((p) => p.stop('SIGKILL')))
  await d?.close()
})

const start = (entry: string, user: string) => runUntilExit(entry, { ...env.vars, NATS_URL: login(user) })

describe('a NATS user lacking publish or subscribe permissions', () => {
  test('API node denied chat events: exits at start naming the subjects', async () => {
    const r = await start('api/src/main.ts', 'nochat')
    expect(r.code).not.toBe(0)
    expect(r.code).not.toBe(137) // still running after 15 s
    expect(r.output).toContain('may not publish to')
    expect(r.output).toContain(`${env.config.FANFARE_SUBJECT_PREFIX}.ev.0.chat.message.posted`)
    expect(r.output).not.toContain('.ev.0.score.submitted')
  }, 30_000)

  test('API node denied the control subjects (revocations, room visibility broadcasts): exits at start naming them', async () => {
    const r = await start('api/src/main.ts', 'nocontrol')
    expect(r.code).not.toBe(0)
    expect(r.code).not.toBe(137)
    expect(r.output).toContain('may not publish to')
    expect(r.output).toContain(`${env.config.FANFARE_SUBJECT_PREFIX}.control.`)
    expect(r.output).not.toContain('.ev.0.')
  }, 30_000)

  test('stream workers denied the change subjects: exit at start naming them', async () => {
    const r = await start('stream-workers/src/main.ts', 'nochanges')
    expect(r.code).not.toBe(0)
    expect(r.code).not.toBe(137)
    expect(r.output).toContain('may not publish to')
    expect(r.output).toContain(`${env.config.FANFARE_SUBJECT_PREFIX}.changes.leaderboard.`)
  }, 30_000)

  test('API node denied subscribe on the control subjects (other nodes\' revocations, room changes): exits at start naming them and the fix', async () => {
    const r = await start('api/src/main.ts', 'nosubcontrol')
    expect(r.code).not.toBe(0)
    expect(r.code).not.toBe(137)
    const prefix = env.config.FANFARE_SUBJECT_PREFIX
    expect(r.output).toContain('may not subscribe to')
    expect(r.output).toContain(`${prefix}.control.revocations`)
    expect(r.output).toContain(`${prefix}.control.rooms`)
    expect(r.output).toContain(`grant it subscribe on _INBOX.> and ${prefix}.control.>`)
    expect(r.output).not.toContain(`${prefix}.presence.node`)
    expect(r.output).not.toContain('may not publish to')
  }, 30_000)

  test('API node and workers denied subscribe on the inbox: exit at start saying so, not that they may not publish', async () => {
    for (const entry of ['api/src/main.ts', 'stream-workers/src/main.ts']) {
      const r = await start(entry, 'noinbox')
      expect(r.code).not.toBe(0)
      expect(r.code).not.toBe(137)
      expect(r.output).toContain('may not subscribe to _INBOX.')
      expect(r.output).toContain('grant it subscribe on _INBOX.>')
      expect(r.output).not.toContain('may not publish to')
    }
  }, 30_000)

  test('API node denied the consumer-deleted advisories: exits at start naming them', async () => {
    const r = await start('api/src/main.ts', 'noadvisory')
    expect(r.code).not.toBe(0)
    expect(r.code).not.toBe(137)
    expect(r.output).toContain(`may not subscribe to $JS.EVENT.ADVISORY.CONSUMER.DELETED.${topology(env.config).changeStreams.chat}.permission-check`)
  }, 30_000)

  test('stream workers denied subscribe on dead-letter replays: exit at start naming the subject', async () => {
    const r = await start('stream-workers/src/main.ts', 'nosubreplay')
    expect(r.code).not.toBe(0)
    expect(r.code).not.toBe(137)
    expect(r.output).toContain(`may not subscribe to ${env.config.FANFARE_SUBJECT_PREFIX}.admin.replay.*.*`)
  }, 30_000)

  test('a user with every permission starts both; the check stored nothing', async () => {
    const node = nodeVars(env.vars, { NATS_URL: login('all') })
    const { api } = node
    await startNodes(node, procs)
    const nc = await connect({ servers: nats.url, user: 'all', pass: 'pw' })
    try {
      const jsm = await jetstreamManager(nc)
      const t = topology(env.config)
      for (const stream of [t.eventStream, ...Object.values(t.changeStreams)]) {
        expect(`${stream}: ${(await jsm.streams.info(stream)).state.messages}`).toBe(`${stream}: 0`)
      }
    } finally {
      await nc.close()
    }
    await stopCleanly(...procs.splice(0))
  }, 60_000)
})

/** What an API node's /metrics says for one series (`name{labels}`), or undefined. */
async function metric(baseUrl: string, adminToken: string, series: string): Promise<number | undefined> {
  const text = await (await fetch(`${baseUrl}/metrics`, { headers: { authorization: `Bearer ${adminToken}` } })).text()
  const line = text.split('\n').find((l) => l.startsWith(`${series} `))
  return line === undefined ? undefined : Number(line.slice(series.length + 1))
}

describe('permissions narrowed by a config reload while nodes run', () => {
  const startApi = async (user: string) => {
    const { vars, api } = nodeVars(env.vars, { NATS_URL: login(user) })
    const proc = spawnProc(`api-${user}`, 'api/src/main.ts', vars)
    procs.push(proc)
    await waitReady(api.baseUrl, [proc])
    return { proc, api }
  }
  const readyz = async (baseUrl: string) => {
    const res = await fetch(`${baseUrl}/readyz`)
    return { status: res.status, body: (await res.json()) as any }
  }

  test('a denied event is 503 publish_denied at once, naming the subject, counted; the SDK gives it up instead of resending it', async () => {
    const { proc, api } = await startApi('narrowed')
    await setPermissions('narrowed', '{ publish: { deny: ["*.ev.*.chat.>"] } }')
    const startedAt = Date.now()
    const res = await fetch(`${api.baseUrl}/v1/events`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${api.ingestToken}` },
      body: JSON.stringify({ events: [{ id: 'denied-1', type: 'chat.message.posted', data: { room: 'r1', user: 'u1', text: 'hi' } }] }),
    })
    const body = await res.json()
    expect(res.status).toBe(503)
    expect(Date.now() - startedAt).toBeLessThan(3000) // not the 5 s publish timeout
    expect(body.error.code).toBe('publish_denied')
    expect(body.error.message).toContain('Permissions Violation')
    expect(body.error.message).toContain('an operator must act')
    expect(body.error.details.subject).toStartWith(`${env.config.FANFARE_SUBJECT_PREFIX}.ev.`)
    expect(body.error.details.results).toEqual([{ id: 'denied-1', stored: false }])
    expect(await metric(api.baseUrl, api.adminToken, 'fanfare_events_refused_total{code="publish_denied"}')).toBe(1)
    // Other types go on.
    expect((await postEvents(api, [scoreEvent('allowed-1', 'b', 'p1', 1)])).status).toBe(202)

    // The SDK: a denied event's publish fails with the code, after one send (an `unavailable` is
    // resent until the dedup window passes: minutes of resending what NATS will keep refusing).
    const client = createClient({ urls: [api.baseUrl], token: api.ingestToken, backoff: { minMs: 50, maxMs: 100 } })
    try {
      const sent = Date.now()
      const err = await client.publish({ type: 'chat.message.posted', data: { room: 'r1', user: 'u1', text: 'sdk' } }).catch((e) => e)
      expect(err).toBeInstanceOf(FanfareError)
      expect(err.code).toBe('publish_denied')
      expect(Date.now() - sent).toBeLessThan(5000)
      const ack = await client.publish({ type: 'score.submitted', data: { board: 'b', player: 'p2', score: 2 } })
      expect(ack.seq).toBeGreaterThan(0)
    } finally {
      client.close()
    }
    expect(await metric(api.baseUrl, api.adminToken, 'fanfare_events_refused_total{code="publish_denied"}')).toBe(2)
    await setPermissions('narrowed')
    await stopCleanly(proc)
  }, 60_000)

  test('the revocations subscription denied: the node is not ready naming the subject, counted, logged; revocations and room changes still reach it from Postgres; granted again, it is ready', async () => {
    const prefix = env.config.FANFARE_SUBJECT_PREFIX
    const { proc: watched, api: a } = await startApi('watched')
    const { proc: other, api: b } = await startApi('all')
    const admin = { 'content-type': 'application/json', authorization: `Bearer ${b.adminToken}` }
    const created = await (await fetch(`${b.baseUrl}/admin/keys`, { method: 'POST', headers: admin, body: JSON.stringify({ name: 'reader', scopes: ['admin:read'] }) })).json()
    const useKey = () => fetch(`${a.baseUrl}/admin/keys`, { headers: { authorization: `Bearer ${created.key}` } }).then((r) => r.status)
    expect(await useKey()).toBe(200)
    // An anonymous reader of a public room on the node to be denied.
    const reader = await WsClient.open(`${a.baseUrl.replace('http', 'ws')}/v1/ws`)
    reader.send({ op: 'subscribe', ref: 's', channel: 'chat:secret' })
    await until('the reader to get the room', () => reader.of('chat:secret').length > 0, 10_000)

    await setPermissions('watched', '{ subscribe: { deny: ["*.control.>"] } }')
    const denied = await until('the node to be not ready', async () => {
      const r = await readyz(a.baseUrl)
      return r.status === 503 ? r.body : undefined
    }, 5_000, 100)
    expect(denied.error.code).toBe('not_ready')
    expect(denied.error.message).toContain(`${prefix}.control.revocations`)
    expect(denied.error.message).toContain(`${prefix}.control.rooms`)
    expect(denied.error.details.deniedSubscriptions.map((d: any) => d.subscription).sort()).toEqual(['revocations', 'rooms'])
    expect(await metric(a.baseUrl, a.adminToken, 'fanfare_nats_subscriptions_denied{subscription="revocations"}')).toBe(1)
    expect(watched.output()).toContain(`NATS denies this process subscribe on ${prefix}.control.revocations`)
    expect((await readyz(b.baseUrl)).status).toBe(200)

    // Revoked on the other node while this one cannot hear it: refused there all the same, within
    // about a second (it reads Postgres every second while denied), not at the next 30 s reload.
    expect((await fetch(`${b.baseUrl}/admin/keys/${created.id}`, { method: 'DELETE', headers: admin })).status).toBe(200)
    await until('the key to be refused on the node that cannot hear the broadcast', async () => (await useKey()) === 401, 3_000, 100)
    // The same for a room made private there: its reader on this node is dropped.
    expect((await fetch(`${b.baseUrl}/admin/rooms/secret`, { method: 'PUT', headers: admin, body: JSON.stringify({ visibility: 'private' }) })).status).toBe(200)
    await until('the reader to be dropped from the room made private', () => reader.frames.find((f) => f.op === 'unsubscribed' && f.channel === 'chat:secret' && f.reason === 'forbidden'), 3_000, 100)
    reader.close()

    await setPermissions('watched')
    await until('the node to be ready again', async () => (await readyz(a.baseUrl)).status === 200, 10_000, 100)
    expect(await metric(a.baseUrl, a.adminToken, 'fanfare_nats_subscriptions_denied{subscription="revocations"}')).toBe(0)
    expect(await useKey()).toBe(401)
    await stopCleanly(watched, other)
  }, 90_000)

  test('the consumer-deleted advisories denied: the change feeds keep following (no loop of new consumers), the node stays ready, the denial is counted', async () => {
    const { proc, api } = await startApi('advisories')
    const mark = proc.output().length
    await setPermissions('advisories', '{ subscribe: { deny: ["$JS.EVENT.ADVISORY.>"] } }')
    const feeds = Object.keys(topology(env.config).changeStreams).length
    await until('the denials to be counted', async () => (await metric(api.baseUrl, api.adminToken, 'fanfare_nats_subscriptions_denied{subscription="consumer_deleted"}')) === feeds, 5_000, 100)
    // Sampled for 4 s: never not ready, no feed interrupted.
    const statuses = new Set<number>()
    for (const until = Date.now() + 4_000; Date.now() < until; await Bun.sleep(100)) statuses.add((await readyz(api.baseUrl)).status)
    expect([...statuses]).toEqual([200])
    expect(proc.output().slice(mark)).not.toContain('change feed interrupted')
    expect(proc.output().slice(mark)).toContain('$JS.EVENT.ADVISORY.CONSUMER.DELETED.')

    await setPermissions('advisories')
    await until('the advisories to be subscribed again', async () => (await metric(api.baseUrl, api.adminToken, 'fanfare_nats_subscriptions_denied{subscription="consumer_deleted"}')) === 0, 5_000, 100)
    await stopCleanly(proc)
  }, 60_000)

  test('stream workers denied the dead-letter replay subscription: logged naming the subject, counted; subscribed again once granted', async () => {
    const prefix = env.config.FANFARE_SUBJECT_PREFIX
    const metricsPort = freePort()
    const worker = spawnProc('worker-replayer', 'stream-workers/src/main.ts', { ...env.vars, NATS_URL: login('replayer'), FANFARE_METRICS_PORT: String(metricsPort), HOST: '127.0.0.1', LOG_LEVEL: 'info' })
    procs.push(worker)
    const denied = async () => {
      const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text()
      const line = text.split('\n').find((l) => l.startsWith('fanfare_nats_subscriptions_denied{subscription="replays"} '))
      return line === undefined ? undefined : Number(line.split(' ')[1])
    }
    await until('the workers to start', () => worker.output().includes('stream workers started'), 30_000, 100)
    await setPermissions('replayer', '{ subscribe: { deny: ["*.admin.replay.>"] } }')
    await until('the denial to be counted', async () => (await denied()) === 1, 5_000, 100)
    expect(worker.output()).toContain(`NATS denies this process subscribe on ${prefix}.admin.replay.*.*`)
    await setPermissions('replayer')
    await until('the replay subscription to be made again', async () => (await denied()) === 0, 5_000, 100)
    expect(worker.output()).toContain(`NATS lets this process subscribe on ${prefix}.admin.replay.*.* again`)
    await stopCleanly(worker)
  }, 60_000)

  test('the inbox denied (where JetStream acknowledges publishes): events are 503 at once, naming it; granted again, ingest works again', async () => {
    const { proc, api } = await startApi('inboxless')
    await setPermissions('inboxless', '{ subscribe: { deny: ["_INBOX.>"] } }')
    const startedAt = Date.now()
    const refused = await postEvents(api, [scoreEvent('inbox-1', 'b', 'p1', 1)])
    expect(refused.status).toBe(503)
    expect(Date.now() - startedAt).toBeLessThan(3000) // not the 5 s publish timeout
    expect(refused.body.error.code).toBe('unavailable') // the event may be stored: only its acknowledgement was lost
    expect(refused.body.error.message).toContain('subscribe on _INBOX.')
    // JetStream requests need the inbox too: the node is not ready.
    expect((await readyz(api.baseUrl)).status).toBe(503)
    await setPermissions('inboxless')
    // The acknowledgement callback used to throw on the denial, inside nats.js' parser: the
    // connection read nothing more (every subscription of the node deaf) until its ping timeout
    // made it reconnect, ~10 s later, every publish meanwhile waiting out its timeout.
    await until('ingest to work again', async () => (await postEvents(api, [scoreEvent('inbox-1', 'b', 'p1', 1)])).status === 202, 3_000, 200)
    await stopCleanly(proc)
  }, 60_000)

  test('core NATS publishes denied (presence heartbeats, a revocation broadcast): logged naming the subject and counted, not dropped in silence', async () => {
    const prefix = env.config.FANFARE_SUBJECT_PREFIX
    const { proc, api } = await startApi('muted')
    await setPermissions('muted', '{ publish: { deny: ["*.presence.>", "*.control.>"] } }')
    // Heartbeats go out every second.
    await until('presence denials to be counted', async () => ((await metric(api.baseUrl, api.adminToken, 'fanfare_nats_publishes_denied_total{area="presence"}')) ?? 0) > 0, 5_000, 100)
    // The limits' messages (`presence.limits`) may be the first denied: the heartbeats follow.
    await until('the denied heartbeat to be logged', () => proc.output().includes(`NATS denies this process publish on ${prefix}.presence.node`), 3_000, 100)
    // Stored in Postgres (other nodes reload it within 30 s), its broadcast dropped: said so.
    const res = await fetch(`${api.baseUrl}/admin/users/u-muted/revoke`, { method: 'POST', headers: { authorization: `Bearer ${api.adminToken}` } })
    expect(res.status).toBe(200)
    await until('the dropped broadcast to be logged', () => proc.output().includes(`NATS denies this process publish on ${prefix}.control.revocations`), 3_000, 100)
    expect(await metric(api.baseUrl, api.adminToken, 'fanfare_nats_publishes_denied_total{area="control"}')).toBe(1)
    await setPermissions('muted')
    await stopCleanly(proc)
  }, 60_000)
})
