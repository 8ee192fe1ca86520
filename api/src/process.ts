import { ConfigError, loadConfig, warnMisspeltVariables, type Config } from '../../core/config'
import { checkMigrated, checkReachable, connectPostgres } from '../../core/db/client'
import { watchDatabase } from '../../core/db/watch'
import { createLogger } from '../../core/logger'
import { startObservability } from '../../core/observability'
import { checkPublishPermissions, checkSubscribePermissions, connectNats, ensureStreams, topology, untilJetStreamAnswers } from '../../core/nats'
import type { StopSignals } from '../../core/stop-signals'
import { readStreamSettings } from '../../core/stream-settings'
import { checkPorts } from '../../core/listen'
import { startApi } from './server'

function configOrExit(): Config {
  try {
    const config = loadConfig()
    const missing = (['DATABASE_URL', 'NATS_URL', 'FANFARE_INGEST_TOKEN', 'FANFARE_ADMIN_TOKEN'] as const).filter((k) => !config[k])
    if (missing.length > 0) {
      console.error(`the API needs ${missing.join(', ')} to be set (npm start runs everything embedded without them)`)
      process.exit(2)
    }
    return config
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(err.message)
      process.exit(2)
    }
    throw err
  }
}

/**
 * The API process against an external Postgres and NATS (`npm run api`; entry: main.ts).
 * SIGTERM/SIGINT stop it cleanly, whenever they come.
 */
export async function runApi(signals: StopSignals) {
  const config = configOrExit()
  const logger = createLogger(config.LOG_LEVEL, { service: 'fanfare-api' }, { format: config.FANFARE_LOG_FORMAT })
  warnMisspeltVariables(logger)
  // Before the databases and NATS: a taken PORT found only when the API listens cost those
  // connections, their checks and the logs of each, above the one line that matters.
  await checkPorts(config)
  const observability = startObservability(config, 'fanfare-api', logger)
  const timeoutMs = config.FANFARE_DATABASE_TIMEOUT_MS
  const database = await connectPostgres(config.DATABASE_URL!, { connectTimeoutMs: timeoutMs })
  await checkMigrated(database.db, config.DATABASE_URL!)
  // Snapshots and REST reads only (a replica); the existing snapshot-older-than-live check covers its lag.
  const readDatabase = config.DATABASE_READ_URL ? await connectPostgres(config.DATABASE_READ_URL, { connectTimeoutMs: timeoutMs }) : undefined
  // A replica that does not answer yet is said, not fatal: the node starts not ready (/readyz checks
  // it) and serves once it answers, instead of crash-looping on a replica restarting beside it.
  if (readDatabase) {
    await checkReachable(readDatabase.db, 'DATABASE_READ_URL', config.DATABASE_READ_URL!).catch((err: Error) =>
      logger.warn({ setting: 'DATABASE_READ_URL' }, `${err.message}: starting not ready (/readyz 503) until it answers`),
    )
  }
  // Without them a request whose query waits on a connection to a Postgres that stopped answering
  // without a reset waits as long as the path is down (see watchDatabase).
  const watches = [
    watchDatabase({ database, timeoutMs, logger: logger.child({ component: 'database' }) }),
    ...(readDatabase ? [watchDatabase({ database: readDatabase, timeoutMs, logger: logger.child({ component: 'database', database: 'read' }) })] : []),
  ]
  const nc = await connectNats(config.NATS_URL!, 'fanfare-api')
  // First: a user denied its inbox would otherwise fail in ensureStreams' first JetStream request.
  await checkSubscribePermissions(nc, topology(config), 'api')
  // What the node tells clients (the de-dup window) is what the streams have, not its own env.
  const { config: settled } = await untilJetStreamAnswers(async () => readStreamSettings(await ensureStreams(nc, config), config, logger), {
    url: config.NATS_URL!,
    warn: (message) => logger.warn(message),
  })
  await checkPublishPermissions(nc, topology(config), 'api')
  const api = await startApi({ config: settled, db: database.db, readDb: readDatabase?.db, nc, logger, metrics: observability.metrics })

  signals.onStop(async (signal) => {
    logger.info({ signal }, 'shutting down')
    try {
      await api.stop()
      await nc.drain()
      await Promise.all(watches.map((w) => w.stop()))
      await database.close()
      await readDatabase?.close()
      await observability.stop()
      process.exit(0)
    } catch (err) {
      logger.error({ err }, 'error during shutdown')
      process.exit(1)
    }
  })
}
