import { loadConfig } from '../config'
import { connectPostgres, migrate } from './client'

/** `npm run migrate`: applies migrations to DATABASE_URL. */
const config = loadConfig()
if (!config.DATABASE_URL) {
  console.error('DATABASE_URL is not set: npm run migrate applies migrations to a Postgres server')
  process.exit(2)
}
const database = await connectPostgres(config.DATABASE_URL, { max: 1 })
await migrate(database)
await database.close()
console.log('migrations applied')
