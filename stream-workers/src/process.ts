import { ConfigError, loadConfig, warnMisspeltVariables } from '../../core/config'
import { checkMigrated, connectBunSql } from '../../core/db/client'
import { watchDatabase } from '../../core/db/watch'
import { createLogger } from '../../core/logger'
import { startObservability } from '../../core/observability'
import { checkPublishPermissions, checkSubscribePermissions, connectNats, topology } from '../../core/nats'
import type { StopSignals } from '../../core/stop-signals'
import { startWorkers } from './workers'

/**
 * The stream-worker process: `npm run workers` (entry: main.ts). Needs DATABASE_URL and NATS_URL;
 * migrations are applied separately (`npm run migrate`). SIGTERM/SIGINT stop it cleanly with exit
 * code 0, whenever they come; a bug in a runner exits with 1 so the container restarts it.
 */
export async function runWorkers(signals: StopSignals) {
  let config
  try {
    config = loadConfig()
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`fanfare stream-workers: ${err.message}\n`)
      process.exit(1)
    }
    throw err
  }
  const missing = (['DATABASE_URL', 'NATS_URL'] as const).filter((k) => !config[k])
  if (missing.length > 0) {
    process.stderr.write(`fanfare stream-workers: ${missing.join(' and ')} must be set (the embedded mode is \`npm start\`)\n`)
    process.exit(1)
  }
  const logger = createLogger(config.LOG_LEVEL, { service: 'stream-workers' }, { format: config.FANFARE_LOG_FORMAT })
  warnMisspeltVariables(logger)
  const observability = startObservability(config, 'fanfare-workers', logger)
  // Bun's SQL client, not postgres.js: see connectBunSql on surviving killed backends.
  const database = await connectBunSql(config.DATABASE_URL!, { connectTimeoutMs: config.FANFARE_DATABASE_TIMEOUT_MS })
  await checkMigrated(database.db, config.DATABASE_URL!)
  // Without it a Postgres that stops answering without a reset stalls every batch, silently.
  const databaseWatch = watchDatabase({ database, timeoutMs: config.FANFARE_DATABASE_TIMEOUT_MS, logger: logger.child({ component: 'database' }) })
  const nc = await connectNats(config.NATS_URL!, `fanfare-workers-${process.pid}`)
  // First: the publish check's requests need the inbox.
  await checkSubscribePermissions(nc, topology(config), 'worker')
  await checkPublishPermissions(nc, topology(config), 'worker')
  const workers = await startWorkers({
    config,
    db: database.db,
    nc,
    logger,
    metrics: observability.metrics,
    database: databaseWatch,
    onFatal: (err) => {
      logger.fatal({ err }, 'stream worker failed; exiting')
      process.exit(1)
    },
    // A crash point for tests of real processes (rebuild-takeover.int.test.ts): the process dies
    // right after a rebuild's switch committed, before its job is saved done. Never set in production.
    rebuildHooks:
      process.env.FANFARE_TEST_CRASH_AT === 'rebuild-switched'
        ? {
            afterSwitch: (job) => {
              logger.warn({ rebuild: job.id, attempt: job.attempt }, 'FANFARE_TEST_CRASH_AT: dying after the switch')
              process.kill(process.pid, 'SIGKILL')
            },
          }
        : undefined,
  })
  signals.onStop(async (signal) => {
    logger.info({ signal }, 'stopping')
    try {
      await workers.stop()
      await nc.drain().catch(() => nc.close())
      await databaseWatch.stop()
      await database.close()
      await observability.stop()
    } catch (err) {
      logger.error({ err }, 'error while stopping')
    }
    process.exit(0)
  })
}
