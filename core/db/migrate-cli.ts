import { ConfigError, loadConfig } from '../config'
import { jetstreamManager } from '@nats-io/jetstream'
import { changeFormatRecorded, connectNats, LATEST_CHANGE_FORMAT, NatsUnreachable, recordChangeFormat, siteOf, untilJetStreamAnswers } from '../nats'
import { StartFailure, startFailure } from '../start-failure'
import { upgradeNats } from '../upgrade'
import { connectPostgres, migrate } from './client'
import { dbErrorSummary } from './errors'

/**
 * `npm run migrate`, the upgrade command: applies the database migrations to DATABASE_URL, then
 * the NATS upgrade steps and the stream and bucket config (replicas included) to NATS_URL. Run it
 * once per upgrade, before starting nodes of the new version: nodes never take these steps
 * themselves (see core/upgrade.ts). Either part is skipped when its URL is unset.
 * `-- --live-batches`: also switches a deployment of an older version to compressed live batches
 * (see core/nats.ts ChangeFormat, recordChangeFormat): run it again once every API node runs this
 * version.
 */
let config
try {
  config = loadConfig()
} catch (err) {
  if (!(err instanceof ConfigError)) throw err
  console.error(err.message)
  process.exit(2)
}
if (!config.DATABASE_URL && !config.NATS_URL) {
  console.error('neither DATABASE_URL nor NATS_URL is set: npm run migrate upgrades a Postgres database and a NATS deployment')
  process.exit(2)
}
// Kept open for the NATS part: an upgrade step reads the checkpoints (see core/upgrade.ts).
const database = config.DATABASE_URL ? await connectPostgres(config.DATABASE_URL, { max: 1 }) : undefined
if (database) {
  try {
    await migrate(database)
  } catch (err) {
    // The one mistake of a first run (README "Running it for real"): say it plainly.
    const cause = (err as { cause?: { code?: string; message?: string } }).cause
    if (cause?.code === '3D000') console.error(`${cause.message}: create it first (createdb, or CREATE DATABASE), then run npm run migrate again`)
    // Any other: drizzle's error names only its first query (the advisory lock) and hides the reason.
    else console.error(`cannot migrate the database at DATABASE_URL: ${dbErrorSummary(err)}`)
    await database.close().catch(() => {})
    process.exit(1)
  }
  console.log('migrations applied')
} else {
  console.log('DATABASE_URL unset: database migrations skipped')
}
if (config.NATS_URL) {
  let nc
  try {
    nc = await connectNats(config.NATS_URL, 'fanfare-migrate')
  } catch (err) {
    // Its message names NATS_URL and the cause (refused, unknown host, timeout, the login).
    if (!(err instanceof NatsUnreachable)) throw err
    console.error(`cannot upgrade NATS: ${err.message}`)
    await database?.close().catch(() => {})
    process.exit(1)
  }
  try {
    const done = await untilJetStreamAnswers(() => upgradeNats(nc, config, database?.db), { url: config.NATS_URL, warn: (message) => console.error(message) })
    for (const line of done) console.log(`nats: ${line}`)
    console.log(`nats streams and buckets match the config (${config.FANFARE_REPLICAS} replica${config.FANFARE_REPLICAS === 1 ? '' : 's'})`)
    if (siteOf(config).kind === 'hub') {
      if (process.argv.includes('--live-batches')) {
        const switched = await recordChangeFormat(nc, config)
        console.log(switched.length > 0 ? `nats: compressed live batches recorded on ${switched.join(', ')}: workers switch within seconds` : 'nats: the change streams already record compressed live batches')
      } else {
        const format = await changeFormatRecorded(await jetstreamManager(nc), config)
        if (format !== LATEST_CHANGE_FORMAT) {
          const held = format === 'runs' ? 'one message per channel run (a deployment from before live batches)' : 'live batches, not compressed (a deployment of the last version)'
          console.log(`nats: the change streams hold ${held}: once every API node runs this version, \`npm run migrate -- --live-batches\` switches them to compressed live batches`)
        }
      }
    }
  } catch (err) {
    // Said in one line, as a node says why it cannot start; anything else is a bug, with its stack.
    if (!(err instanceof StartFailure)) throw err
    console.error(`cannot upgrade NATS: ${startFailure(err)}`)
    process.exitCode = 1
  } finally {
    await nc.close()
  }
} else {
  console.log('NATS_URL unset: NATS upgrade skipped')
}
await database?.close()
