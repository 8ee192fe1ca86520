import { afterAll, describe, expect, test } from 'bun:test'
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createLogger } from '../core/logger'
import { DirInUse } from '../core/db/dir-lock'
import { until } from '../core/testing/wait'
import { freePort } from '../core/process'
import { createTestEnv, type TestEnv } from '../core/testing/env'
import { createJwtVerifier } from '../api/src/auth/jwt'
import { banner, startAllInOne, type AllInOne } from './all-in-one'

const logger = createLogger('silent')
const cleanups: (() => Promise<void> | void)[] = []
afterAll(async () => {
  for (const fn of cleanups.reverse()) await fn()
})

/** The demo user's token as the banner shows it (what a person would copy). */
function bannerToken(app: AllInOne): string {
  const m = /User token\s+(\S+)/.exec(banner(app))
  if (!m) throw new Error(`no demo token in the banner:\n${banner(app)}`)
  return m[1]
}

async function healthz(app: AllInOne): Promise<number> {
  const res = await fetch(`${app.url}/healthz`)
  return res.status
}

describe('all-in-one', () => {
  test('serves the metrics of both sides, from one registry, on FANFARE_METRICS_PORT', async () => {
    const metricsPort = freePort()
    const env: TestEnv = await createTestEnv({ PORT: '0', HOST: '127.0.0.1', FANFARE_METRICS_PORT: String(metricsPort) })
    cleanups.push(env.cleanup)
    const app = await startAllInOne(env.vars, logger)
    cleanups.push(app.stop)
    const res = await fetch(`${app.url}/v1/events`, {
      method: 'POST',
      headers: { authorization: `Bearer ${env.vars.FANFARE_INGEST_TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ type: 'score.submitted', data: { board: 'b', player: 'p', score: 1 } }),
    })
    expect(res.status).toBe(202)
    const scrape = () => fetch(`http://127.0.0.1:${metricsPort}/metrics`).then((r) => r.text())
    // The API side counted the event; the worker side, in the same process, its batch.
    const text = await until('the batch counted', async () => {
      const t = await scrape()
      return /^fanfare_batch_events_count [1-9]/m.test(t) ? t : undefined
    })
    expect(text).toContain('fanfare_events_ingested_total{type="score.submitted",via="http"} 1')
    expect(text).toContain('fanfare_ws_connections 0')
    await app.stop()
    // Stopped with the rest.
    expect(await scrape().then(() => 'answered', () => 'refused')).toBe('refused')
  }, 60_000)

  test('runs API and workers against Postgres and NATS from the environment', async () => {
    const env: TestEnv = await createTestEnv({ PORT: '0', HOST: '127.0.0.1' })
    cleanups.push(env.cleanup)
    const app = await startAllInOne(env.vars, logger)
    cleanups.push(app.stop)
    expect(app.generated).toEqual({ ingest: false, admin: false, jwt: false })
    expect(app.config.FANFARE_INGEST_TOKEN).toBe(env.vars.FANFARE_INGEST_TOKEN)
    expect(await healthz(app)).toBe(200)
    // The demo token is signed with the configured secret.
    const demo = await createJwtVerifier({ FANFARE_JWT_SECRET: env.vars.FANFARE_JWT_SECRET })!(bannerToken(app))
    expect(demo).toMatchObject({ kind: 'user', id: 'demo', name: 'Demo' })
    expect(Math.abs(demo.expiresAt - (Date.now() + 24 * 3600_000))).toBeLessThan(60_000)
    await app.stop()
  }, 60_000)

  test('generates a JWT secret when unset and prints a demo token the running API accepts', async () => {
    const env: TestEnv = await createTestEnv({ PORT: '0', HOST: '127.0.0.1' })
    cleanups.push(env.cleanup)
    const app = await startAllInOne({ ...env.vars, FANFARE_JWT_SECRET: undefined }, logger)
    cleanups.push(app.stop)
    expect(app.generated).toEqual({ ingest: false, admin: false, jwt: true })
    const secret = app.config.FANFARE_JWT_SECRET!
    expect(secret).toMatch(/^[A-Za-z0-9_-]{43}$/)
    expect(banner(app)).toContain(`JWT secret   ${secret}  (generated`)
    const token = bannerToken(app)
    expect(await createJwtVerifier({ FANFARE_JWT_SECRET: secret })!(token)).toMatchObject({ id: 'demo', name: 'Demo' })
    const res = await fetch(`${app.url}/v1/events`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ type: 'chat.message.posted', data: { room: 'lobby', user: 'demo', text: 'hello' } }),
    })
    expect(res.status).toBe(202)
    await app.stop()
  }, 60_000)

  test('with only FANFARE_JWKS_URL, no secret is generated and the banner says who mints tokens', async () => {
    const env: TestEnv = await createTestEnv({ PORT: '0', HOST: '127.0.0.1' })
    cleanups.push(env.cleanup)
    const app = await startAllInOne({ ...env.vars, FANFARE_JWT_SECRET: undefined, FANFARE_JWKS_URL: 'http://127.0.0.1:9/jwks.json' }, logger)
    cleanups.push(app.stop)
    expect([app.generated.jwt, app.config.FANFARE_JWT_SECRET, app.demoToken]).toEqual([false, undefined, undefined])
    expect(banner(app)).toContain('User tokens  verified with FANFARE_JWKS_URL')
    await app.stop()
  }, 60_000)

  test('embedded mode: PGlite and a private nats-server, generated tokens, one process per data dir', async () => {
    // createTestEnv is not needed: this mode owns its database and NATS, in a scratch directory.
    const dataDir = mkdtempSync(join(tmpdir(), 'fanfare-aio-'))
    cleanups.push(() => rmSync(dataDir, { recursive: true, force: true }))
    const vars = { PORT: '0', HOST: '127.0.0.1', FANFARE_DATA_DIR: dataDir, LOG_LEVEL: 'silent' }
    const app = await startAllInOne(vars, logger)
    cleanups.push(app.stop)
    expect(app.generated).toEqual({ ingest: true, admin: true, jwt: true })
    expect(app.config.FANFARE_INGEST_TOKEN).toMatch(/^[A-Za-z0-9_-]{43}$/)
    expect(app.config.NATS_URL).toMatch(/^nats:\/\/127\.0\.0\.1:\d+$/)
    expect(banner(app)).toContain(app.config.FANFARE_ADMIN_TOKEN!)
    expect(await createJwtVerifier(app.config)!(bannerToken(app))).toMatchObject({ id: 'demo' })
    expect(await healthz(app)).toBe(200)

    // The live read models on PGlite: a stream, a poll (jsonb tallies, event times) and a vote.
    const post = async (token: string, events: unknown[]) => {
      const res = await fetch(`${app.url}/v1/events`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify({ events }) })
      expect(res.status).toBe(202)
    }
    await post(app.config.FANFARE_INGEST_TOKEN!, [
      { type: 'stream.started', data: { stream: 'tv', title: 'Demo' } },
      { type: 'poll.opened', data: { stream: 'tv', poll: 'p1', question: 'Yes?', options: ['yes', 'no'], closesAt: new Date(Date.now() + 3600_000).toISOString() } },
    ])
    await post(bannerToken(app), [{ type: 'poll.voted', data: { poll: 'p1', option: 1 } }])
    const stream = await until('the stream with its poll voted on', async () => {
      const res = await fetch(`${app.url}/v1/streams/tv`)
      const body = res.status === 200 ? ((await res.json()) as any) : undefined
      return body?.poll?.options?.[1]?.votes === 1 ? body : undefined
    }, 20_000, 100)
    expect(stream).toMatchObject({ status: 'live', title: 'Demo', poll: { poll: 'p1', status: 'open', options: [{ text: 'yes', votes: 0 }, { text: 'no', votes: 1 }] } })
    expect(((await (await fetch(`${app.url}/v1/streams?status=live`)).json()) as any).streams.map((s: any) => s.stream)).toEqual(['tv'])

    const second = startAllInOne(vars, logger)
    await expect(second).rejects.toThrow(/in use by process/)
    await expect(second).rejects.toBeInstanceOf(DirInUse)
    await app.stop()
  }, 60_000)

  test('a port already taken is refused naming PORT and what to do, before anything is started', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'fanfare-aio-'))
    cleanups.push(() => rmSync(dataDir, { recursive: true, force: true }))
    const taken = Bun.serve({ port: 0, hostname: '127.0.0.1', reusePort: false, fetch: () => new Response('not fanfare') })
    cleanups.push(() => taken.stop(true))
    const vars = { PORT: String(taken.port), HOST: '127.0.0.1', FANFARE_DATA_DIR: dataDir, LOG_LEVEL: 'silent' }
    const err = await startAllInOne(vars, logger).then(
      () => undefined,
      (e: Error) => e,
    )
    expect(err?.message).toBe(`cannot listen on 127.0.0.1:${taken.port}: the port is in use by another process (another Fanfare?): stop it, or set PORT to a free port`)
    // Refused before the database was opened or nats-server started: neither left anything in
    // the data directory (PGlite's files, the nats store and its pid file).
    expect(readdirSync(dataDir)).toEqual([])
    // The data directory is free again: the same start on a free port works.
    const app = await startAllInOne({ ...vars, PORT: '0' }, logger)
    cleanups.push(app.stop)
    expect(await healthz(app)).toBe(200)
    await app.stop()
  }, 60_000)

  test('a FANFARE_DATA_DIR that cannot be created is refused naming the variable and what to do', async () => {
    const scratch = mkdtempSync(join(tmpdir(), 'fanfare-aio-'))
    cleanups.push(() => rmSync(scratch, { recursive: true, force: true }))
    // Under a file: no user, root included, can create it.
    writeFileSync(join(scratch, 'file'), '')
    const dataDir = join(scratch, 'file', 'data')
    const vars = { PORT: '0', HOST: '127.0.0.1', FANFARE_DATA_DIR: dataDir, LOG_LEVEL: 'silent' }
    await expect(startAllInOne(vars, logger)).rejects.toThrow(
      `FANFARE_DATA_DIR (${dataDir}) cannot be used (ENOTDIR): set FANFARE_DATA_DIR to a directory this user can create and write, or set DATABASE_URL and NATS_URL to use servers instead`,
    )
  }, 60_000)
})
