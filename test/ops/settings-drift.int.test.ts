import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { jetstreamManager } from '@nats-io/jetstream'
import { millis, type NatsConnection } from '@nats-io/transport-node'
import { mintUserToken } from '../../api/src/auth/mint'
import { connectNats, streamIdentity, topology } from '../../core/nats'
import { createTestEnv, TEST_NATS_URL, type TestEnv } from '../../core/testing/env'
import { ROOT, startApiNodes, WsClient, type Proc } from '../e2e/harness'

/**
 * The streams are shared by every node; their settings have one writer, `npm run migrate`. Before,
 * every node rewrote them with its own env at start: node B started with FANFARE_DEDUP_WINDOW_MS=2000
 * cut the event stream's window to 2 s while node A went on telling its clients 120000 (the
 * `authed` frame), and an event resent to A after 3 s was stored twice.
 */
describe('a node whose stream settings differ from the streams', () => {
  let env: TestEnv
  let nc: NatsConnection
  const procs: Proc[] = []
  beforeAll(async () => {
    env = await createTestEnv({ LOG_LEVEL: 'warn', FANFARE_LOG_FORMAT: 'json', HOST: '127.0.0.1' })
    nc = await connectNats(TEST_NATS_URL, 'settings-drift-test')
  })
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop()))
    await nc?.close()
    await env?.cleanup()
  })

  const dedupWindowOfStream = async () => millis((await (await jetstreamManager(nc)).streams.info(topology(env.config).eventStream)).config.duplicate_window ?? 0)
  /** The dedupWindowMs a node's `authed` frame tells a client. */
  const toldWindow = async (port: number) => {
    const c = await WsClient.open(`ws://127.0.0.1:${port}/v1/ws`)
    c.send({ op: 'auth', ref: 'a', token: await mintUserToken(env.vars.FANFARE_JWT_SECRET, { sub: 'ann', name: 'Ann' }) })
    const authed = await c.reply('a')
    c.close()
    expect(authed.op).toBe('authed')
    return authed.dedupWindowMs as number
  }
  const post = async (port: number, id: string) => {
    const res = await fetch(`http://127.0.0.1:${port}/v1/events`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${env.vars.FANFARE_INGEST_TOKEN}` },
      body: JSON.stringify({ id, type: 'score.submitted', data: { board: 'drift', player: 'ann', score: 1 } }),
    })
    expect(res.status).toBe(202)
    return ((await res.json()) as { results: { seq: number; duplicate: boolean }[] }).results[0]
  }
  const driftWarnings = (p: Proc) =>
    p
      .output()
      .split('\n')
      .filter((l) => l.includes('"variable":"FANFARE_DEDUP_WINDOW_MS"'))
      .map((l) => JSON.parse(l) as { level: number; msg: string; configured: number; actual: number })

  test('a node started with another window changes nothing and tells the stream’s; `npm run migrate` applies it; nodes started after tell the new one', async () => {
    const short = { ...env.vars, FANFARE_DEDUP_WINDOW_MS: '2000' }
    const [a] = await startApiNodes(['a'], env.vars, procs)
    const [b] = await startApiNodes(['b'], short, procs)
    const nodeB = procs[1]

    // B left the stream's window as A's start made it, and tells its clients that one.
    expect(await dedupWindowOfStream()).toBe(120_000)
    expect(await toldWindow(a)).toBe(120_000)
    expect(await toldWindow(b)).toBe(120_000)
    const [warning] = driftWarnings(nodeB)
    expect(warning).toMatchObject({ level: 40, configured: 2000, actual: 120_000 })
    expect(warning.msg).toContain('FANFARE_DEDUP_WINDOW_MS is 2000 here but stream')
    expect(warning.msg).toContain('npm run migrate')

    // The reproduction: a resend to A 3 s later is within the window A told: stored once.
    const first = await post(a, 'same-id')
    await Bun.sleep(3_000)
    const again = await post(a, 'same-id')
    expect(first.duplicate).toBe(false)
    expect(again).toEqual({ ...first, duplicate: true })

    // `npm run migrate` with B's config is what changes the window, keeping the stream's identity.
    const identity = await streamIdentity(await jetstreamManager(nc), topology(env.config).eventStream)
    const migrate = Bun.spawn([process.execPath, 'core/db/migrate-cli.ts'], { cwd: ROOT, env: { PATH: process.env.PATH, ...short }, stdout: 'pipe', stderr: 'pipe' })
    expect(await migrate.exited).toBe(0)
    expect(await dedupWindowOfStream()).toBe(2000)
    expect(await streamIdentity(await jetstreamManager(nc), topology(env.config).eventStream)).toBe(identity)

    // Nodes started now tell the stream's window, whatever their own: B's config without a
    // warning, A's default with one.
    await Promise.all(procs.splice(0).map((p) => p.stop()))
    const [a2] = await startApiNodes(['a2'], env.vars, procs)
    const [b3] = await startApiNodes(['b3'], short, procs)
    expect(await toldWindow(a2)).toBe(2000)
    expect(await toldWindow(b3)).toBe(2000)
    expect(driftWarnings(procs[1])).toEqual([])
    expect(driftWarnings(procs[0])[0]).toMatchObject({ configured: 120_000, actual: 2000 })
  }, 90_000)
})
