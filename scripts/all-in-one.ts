import { randomBytes } from 'node:crypto'
import { accessSync, constants, mkdirSync } from 'node:fs'
import { resolve } from 'node:path'
import type { NatsConnection } from '@nats-io/transport-node'
import { loadConfig, warnMisspeltVariables, type Config } from '../core/config'
import { checkReachable, connectPostgres, migrate, openEmbedded, type Database } from '../core/db/client'
import { watchDatabase } from '../core/db/watch'
import { createLogger, type Logger } from '../core/logger'
import { connectNats, recordChangeFormat } from '../core/nats'
import { upgradeNats } from '../core/upgrade'
import { startObservability } from '../core/observability'
import { startApi } from '../api/src/server'
import { checkPorts } from '../core/listen'
import { StartFailure, startFailure } from '../core/start-failure'
import { mintUserToken } from '../api/src/auth/mint'
import { startWorkers } from '../stream-workers/src/workers'
import { startEmbeddedNats } from './embedded-nats'

/** A running all-in-one Fanfare: API, stream workers and (when not configured) embedded services. */
export type AllInOne = {
  /** Base URL of the HTTP API, e.g. http://127.0.0.1:3000 */
  url: string
  config: Config
  /** True for each token (and the JWT secret) that was generated because its variable was unset. */
  generated: { ingest: boolean; admin: boolean; jwt: boolean }
  /**
   * A user token for the demo user (`sub` demo, name Demo, valid 24 h), signed with
   * FANFARE_JWT_SECRET; undefined when only FANFARE_JWKS_URL verifies user tokens (we cannot sign those).
   */
  demoToken: string | undefined
  /** Stops API, workers, database and the embedded NATS, in that order. Safe to call twice. */
  stop: () => Promise<void>
}

/**
 * Starts the whole of Fanfare in this process (the `npm start` target): embedded PGlite when
 * DATABASE_URL is unset, a private nats-server when NATS_URL is unset, then workers and API.
 * A PORT or FANFARE_METRICS_PORT already taken is refused first, with nothing started; everything
 * started is stopped again if a later step fails.
 */
export async function startAllInOne(
  env: Record<string, string | undefined> = process.env,
  logger?: Logger,
  options: {
    /**
     * A worker hit an error retrying cannot fix. Default: stop everything cleanly (the embedded
     * nats-server and the PGlite lock included) and exit 1.
     */
    onFatal?: (err: unknown) => void
    /**
     * Told of each child process started (the embedded nats-server), with a function that kills it
     * at once: for a forced exit, which cannot wait for `stop`.
     */
    onChild?: (kill: () => void) => void
  } = {},
): Promise<AllInOne> {
  const parsed = loadConfig(env)
  // A JWKS deployment verifies its own issuer's tokens: a generated secret would add a second,
  // unasked-for way in.
  const generated = { ingest: !parsed.FANFARE_INGEST_TOKEN, admin: !parsed.FANFARE_ADMIN_TOKEN, jwt: !parsed.FANFARE_JWT_SECRET && !parsed.FANFARE_JWKS_URL }
  const config: Config = {
    ...parsed,
    FANFARE_INGEST_TOKEN: parsed.FANFARE_INGEST_TOKEN ?? newToken(),
    FANFARE_ADMIN_TOKEN: parsed.FANFARE_ADMIN_TOKEN ?? newToken(),
    FANFARE_JWT_SECRET: generated.jwt ? newToken() : parsed.FANFARE_JWT_SECRET,
    // The demo page is part of trying Fanfare out on one machine, which is what this mode is for.
    FANFARE_DEMO: parsed.FANFARE_DEMO ?? 'on',
  }
  const log = logger ?? createLogger(config.LOG_LEVEL, { service: 'fanfare', mode: 'all-in-one' }, { format: config.FANFARE_LOG_FORMAT })
  warnMisspeltVariables(log, env)
  const dataDir = resolve(config.FANFARE_DATA_DIR)

  // Undo list, run in reverse when a step fails or on stop.
  const stops: { name: string; run: () => Promise<void> }[] = []
  let stopping: Promise<void> | undefined
  const stop = () =>
    (stopping ??= (async () => {
      for (const step of stops.reverse()) {
        try {
          await step.run()
        } catch (err) {
          log.error({ err, step: step.name }, 'error while stopping')
        }
      }
    })())

  try {
    // Before anything is started: a taken port found only at the end, after the database, the
    // nats-server and the workers, cost seconds and left their logs above the one line that matters.
    await checkPorts(config)
    if (!config.DATABASE_URL || !config.NATS_URL) checkDataDir(dataDir)
    // The database first: a second all-in-one on the same data directory fails here, on the
    // PGlite lock, before it starts anything else.
    let database: Database
    if (config.DATABASE_URL) {
      const postgres = await connectPostgres(config.DATABASE_URL, { connectTimeoutMs: config.FANFARE_DATABASE_TIMEOUT_MS })
      database = postgres
      log.info({ database: 'postgres' }, 'using Postgres from DATABASE_URL')
      stops.push({ name: 'database', run: () => database.close() })
      // Else the first query, the migrations' lock, failed naming only itself, not why.
      await checkReachable(postgres.db, 'DATABASE_URL', config.DATABASE_URL)
      // Stopped before the database is closed (stops run in reverse).
      const watch = watchDatabase({ database: postgres, timeoutMs: config.FANFARE_DATABASE_TIMEOUT_MS, logger: log.child({ component: 'database' }) })
      stops.push({ name: 'database watch', run: watch.stop })
    } else {
      log.info({ dataDir }, 'DATABASE_URL unset: opening embedded PGlite')
      database = await openEmbedded(dataDir)
      stops.push({ name: 'database', run: () => database.close() })
    }
    // One registry for both sides of this process (stopped after them: it exports the last spans).
    const observability = startObservability(config, 'fanfare', log)
    stops.push({ name: 'observability', run: observability.stop })
    await migrate(database)
    log.info('migrations applied')

    let natsUrl = config.NATS_URL
    if (!natsUrl) {
      log.info({ dataDir }, 'NATS_URL unset: starting a local nats-server with JetStream')
      // Not a port this process is about to listen on: the kernel may hand back the one just checked free.
      const avoidPorts = [config.PORT, config.FANFARE_METRICS_PORT].filter((p): p is number => p !== undefined && p > 0)
      const nats = await startEmbeddedNats({ dataDir, logger: log, avoidPorts })
      stops.push({ name: 'embedded nats', run: nats.stop })
      options.onChild?.(nats.kill)
      natsUrl = nats.url
    }
    const runConfig: Config = { ...config, NATS_URL: natsUrl }

    const nc: NatsConnection = await connectNats(natsUrl, 'fanfare-all-in-one')
    stops.push({ name: 'nats connection', run: () => nc.drain().catch(() => nc.close()) })
    // One process is the whole deployment, with no older node to pull anything from under: it
    // takes the upgrade steps itself, as it applies the database migrations (`npm run migrate`
    // does both for separate nodes).
    for (const line of await upgradeNats(nc, runConfig, database.db)) log.info({ step: line }, 'nats upgraded')
    // Its change streams too: an older version's change format, switched (no older node reads them).
    const switched = await recordChangeFormat(nc, runConfig, { alone: true })
    if (switched.length > 0) log.info({ streams: switched }, 'nats upgraded: compressed live batches recorded')

    const onFatal =
      options.onFatal ??
      ((err: unknown) => {
        log.fatal({ err }, 'stream workers hit a fatal error; stopping')
        void stop().finally(() => process.exit(1))
      })
    const workers = await startWorkers({
      config: runConfig,
      db: database.db,
      nc,
      logger: log.child({ component: 'workers' }),
      metrics: observability.metrics,
      onFatal,
    })
    stops.push({ name: 'workers', run: () => workers.stop() })

    // The workers above run the retention watch for this process.
    const api = await startApi({ config: runConfig, db: database.db, nc, logger: log.child({ component: 'api' }), metrics: observability.metrics, watchRetention: false })
    stops.push({ name: 'api', run: () => api.stop() })

    const host = runConfig.HOST === '0.0.0.0' || runConfig.HOST === '::' ? '127.0.0.1' : runConfig.HOST
    const url = `http://${host.includes(':') ? `[${host}]` : host}:${api.port}`
    log.info({ url, workerId: workers.workerId }, 'fanfare all-in-one ready')
    const demoToken = runConfig.FANFARE_JWT_SECRET
      ? await mintUserToken(runConfig.FANFARE_JWT_SECRET, {
          sub: DEMO_USER.sub,
          name: DEMO_USER.name,
          ttlSeconds: DEMO_USER.ttlSeconds,
          issuer: runConfig.FANFARE_JWT_ISSUER,
          audience: runConfig.FANFARE_JWT_AUDIENCE,
        })
      : undefined
    return { url, config: runConfig, generated, demoToken, stop }
  } catch (err) {
    await stop()
    throw err
  }
}

/**
 * Thrown at start when FANFARE_DATA_DIR cannot hold the embedded database and nats-server store:
 * otherwise the first mkdir or open in it failed with a bare ENOTDIR or EACCES and a stack trace.
 */
export class DataDirUnusable extends StartFailure {
  constructor(dir: string, cause: unknown) {
    const reason = (cause as { code?: string } | undefined)?.code ?? (cause as Error)?.message ?? String(cause)
    super(
      `FANFARE_DATA_DIR (${dir}) cannot be used (${reason}): set FANFARE_DATA_DIR to a directory this user can create and write, or set DATABASE_URL and NATS_URL to use servers instead`,
      { cause },
    )
    this.name = 'DataDirUnusable'
  }
}

/** Creates the data directory if missing and checks that it can be written. */
function checkDataDir(dir: string): void {
  try {
    mkdirSync(dir, { recursive: true })
    accessSync(dir, constants.W_OK)
  } catch (err) {
    throw new DataDirUnusable(dir, err)
  }
}

/** Who the demo token printed at start is for. */
export const DEMO_USER = { sub: 'demo', name: 'Demo', ttlSeconds: 24 * 3600 }

/** 32 random bytes, base64url (43 characters): over the config's minimums (16; 32 for the JWT secret). */
function newToken(): string {
  return randomBytes(32).toString('base64url')
}

/** The human-readable start banner (stderr), next to the JSON log on stdout. */
export function banner(app: AllInOne): string {
  const mark = (generatedNow: boolean) => (generatedNow ? '  (generated for this run; set the variable to keep it)' : '')
  return [
    '',
    '  Fanfare is running (all-in-one)',
    `    API          ${app.url}`,
    `    Health       ${app.url}/healthz`,
    `    API docs     ${app.url}/docs`,
    `    Console      ${app.url}/admin/console (sign in with the admin token)`,
    ...(app.config.FANFARE_DEMO === 'on' && app.config.FANFARE_JWT_SECRET ? [`    Demo         ${app.url}/demo`] : []),
    `    WebSocket    ${app.url.replace(/^http/, 'ws')}/v1/ws`,
    `    Ingest token ${app.config.FANFARE_INGEST_TOKEN}${mark(app.generated.ingest)}`,
    `    Admin token  ${app.config.FANFARE_ADMIN_TOKEN}${mark(app.generated.admin)}`,
    ...(app.config.FANFARE_JWT_SECRET ? [`    JWT secret   ${app.config.FANFARE_JWT_SECRET}${mark(app.generated.jwt)}`] : []),
    app.demoToken
      ? `    User token   ${app.demoToken}  (user "${DEMO_USER.sub}", 24 h; more: npm run token -- --user <id>)`
      : '    User tokens  verified with FANFARE_JWKS_URL (minted by your own auth service)',
    `    Database     ${app.config.DATABASE_URL ? 'Postgres (DATABASE_URL)' : `embedded PGlite in ${resolve(app.config.FANFARE_DATA_DIR)}`}`,
    `    NATS         ${app.config.NATS_URL}`,
    '  Press Ctrl-C to stop.',
    '',
  ].join('\n')
}

/** Signals closer together than this are one Ctrl-C (a terminal's and a forwarding parent's). */
const REPEAT_MS = 500
/** Command-line flag: stop when the parent process exits (scripts/bootstrap.mjs passes it). */
export const EXIT_WITH_PARENT = '--exit-with-parent'
/** A graceful stop that takes longer than this is cut short (as a second Ctrl-C would). */
const STOP_DEADLINE_MS = 30_000

if (import.meta.main) {
  let exiting = false
  let lastSignalAt = -Infinity
  const kills: (() => void)[] = []
  const starting = startAllInOne(process.env, undefined, { onChild: (kill) => kills.push(kill) })
  /** Exits now: kills what we started (nats-server), skips every graceful step. */
  const force = (why: string) => {
    process.stderr.write(`\n  ${why}: exiting now\n`)
    for (const kill of kills) kill()
    process.exit(130)
  }
  const shutdown = async (why: string) => {
    if (exiting) return
    exiting = true
    process.stderr.write(`\n  ${why}: stopping Fanfare (Ctrl-C again to exit at once)...\n`)
    setTimeout(() => force(`still stopping after ${STOP_DEADLINE_MS / 1000} s`), STOP_DEADLINE_MS).unref()
    // A signal during start-up waits for the start to finish (or fail) so every child is stopped.
    const app = await starting.catch(() => undefined)
    await app?.stop()
    process.exit(0)
  }
  const onSignal = (signal: string) => {
    const now = Date.now()
    if (now - lastSignalAt < REPEAT_MS) return
    lastSignalAt = now
    if (exiting) force(`${signal} again`)
    else void shutdown(signal)
  }
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, () => onSignal(signal))
  // Under `npm start` our parent is scripts/bootstrap.mjs, which may die without telling us (even
  // by SIGKILL): then we are re-parented, and stop as if told to, so that nothing is left running.
  // Only when asked: started by hand in the background (nohup, &), outliving the shell is wanted.
  if (process.argv.includes(EXIT_WITH_PARENT)) {
    const parent = process.ppid
    const orphaned = setInterval(() => {
      if (process.ppid === parent) return
      clearInterval(orphaned)
      void shutdown('parent process exited')
    }, 500)
    orphaned.unref()
  }
  try {
    const app = await starting
    if (!exiting) process.stderr.write(banner(app) + '\n')
  } catch (err) {
    process.stderr.write(`\nfanfare: failed to start: ${startFailure(err, { named: false })}\n`)
    process.exit(1)
  }
}
