import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { jetstreamManager } from '@nats-io/jetstream'
import { connect } from '@nats-io/transport-node'
import { topology } from '../../core/nats'
import { createTestEnv, type TestEnv } from '../../core/testing/env'
import { freePort, runUntilExit, spawnProc, waitReady, type Proc } from '../e2e/harness'
import { postEvents, scoreEvent, stopCleanly } from '../cluster/support'
import { privateNats, type PrivateNats } from '../cluster/private-nats'

/**
 * A NATS user whose permissions lack subjects Fanfare publishes to. nats-server drops such a
 * publish and only tells the connection asynchronously: an API node was ready and answered every
 * event of a denied type 503 `unavailable` after the 5 s publish timeout, and a worker denied the
 * change subjects applied events while subscribers got no update. Both must refuse to start,
 * naming the subjects. The check stores nothing.
 */
let env: TestEnv
let nats: PrivateNats
const procs: Proc[] = []
const storeDir = mkdtempSync(join(tmpdir(), 'fanfare-nats-perms-'))
const login = (user: string) => nats.url.replace('nats://', `nats://${user}:pw@`)

beforeAll(async () => {
  nats = privateNats({
    port: freePort(),
    storeDir,
    users: [
      { user: 'all', password: 'pw' },
      { user: 'nochat', password: 'pw', permissions: '{ publish: { deny: ["*.ev.*.chat.>"] } }' },
      { user: 'nochanges', password: 'pw', permissions: '{ publish: { deny: ["*.changes.>"] } }' },
      { user: 'nocontrol', password: 'pw', permissions: '{ publish: { deny: ["*.control.>"] } }' },
      { user: 'narrowed', password: 'pw' },
      { user: 'nosubcontrol', password: 'pw', permissions: '{ subscribe: { deny: ["*.control.>"] } }' },
      { user: 'noinbox', password: 'pw', permissions: '{ subscribe: { deny: ["_INBOX.>"] } }' },
      { user: 'noadvisory', password: 'pw', permissions: '{ subscribe: { deny: ["$JS.EVENT.ADVISORY.>"] } }' },
      { user: 'nosubreplay', password: 'pw', permissions: '{ subscribe: { deny: ["*.admin.replay.>"] } }' },
    ],
  })
  await nats.start()
  env = await createTestEnv({ FANFARE_PARTITIONS: '2' })
})
afterAll(async () => {
  await Promise.all(procs.map((p) => p.stop('SIGKILL')))
  await nats?.stop()
  await env?.cleanup()
  rmSync(storeDir, { recursive: true, force: true })
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
    const port = freePort()
    const vars = { ...env.vars, NATS_URL: login('all'), PORT: String(port), HOST: '127.0.0.1' }
    procs.push(spawnProc('api', 'api/src/main.ts', vars), spawnProc('worker', 'stream-workers/src/main.ts', vars))
    await waitReady(`http://127.0.0.1:${port}`, procs)
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

  test('permissions narrowed while running (a config reload): a denied event is 503 at once, naming the subject', async () => {
    const port = freePort()
    const vars = { ...env.vars, NATS_URL: login('narrowed'), PORT: String(port), HOST: '127.0.0.1' }
    const api = { baseUrl: `http://127.0.0.1:${port}`, ingestToken: env.vars.FANFARE_INGEST_TOKEN, adminToken: env.vars.FANFARE_ADMIN_TOKEN }
    procs.push(spawnProc('api', 'api/src/main.ts', vars))
    await waitReady(api.baseUrl, procs)
    const users = [{ user: 'narrowed', password: 'pw', permissions: '{ publish: { deny: ["*.ev.*.chat.>"] } }' }]
    await nats.reload({ users })
    const startedAt = Date.now()
    const res = await fetch(`${api.baseUrl}/v1/events`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${api.ingestToken}` },
      body: JSON.stringify({ events: [{ id: 'denied-1', type: 'chat.message.posted', data: { room: 'r1', user: 'u1', text: 'hi' } }] }),
    })
    const body = await res.json()
    expect(res.status).toBe(503)
    expect(Date.now() - startedAt).toBeLessThan(3000) // not the 5 s publish timeout
    expect(body.error.message).toContain('Permissions Violation')
    expect(body.error.message).toContain(`${env.config.FANFARE_SUBJECT_PREFIX}.ev.`)
    expect(body.error.details.results).toEqual([{ id: 'denied-1', stored: false }])
    // Other types go on.
    expect((await postEvents(api, [scoreEvent('allowed-1', 'b', 'p1', 1)])).status).toBe(202)
    await stopCleanly(...procs.splice(0))
  }, 60_000)
})
