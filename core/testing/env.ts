import postgres from 'postgres'
import { jetstreamManager } from '@nats-io/jetstream'
import { connect } from '@nats-io/transport-node'
import { loadConfig, type Config } from '../config'
import { connectPostgres, migrate } from '../db/client'
import { deploymentStreams, ensureStreams, LATEST_CHANGE_FORMAT, topology, type ChangeFormat } from '../nats'

/** Real services the tests use; CI starts them when they are not running. */
export const TEST_PG_URL = process.env.FANFARE_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
export const TEST_NATS_URL = process.env.FANFARE_TEST_NATS_URL ?? 'nats://127.0.0.1:4222'

/**
 * The change format of tests' deployments (core/nats.ts ChangeFormat): the latest, as every new
 * deployment's. `FANFARE_TEST_CHANGES=runs bun test <file>` (or `batches`) runs a file on a
 * deployment of an older version instead: createTestEnv creates its change streams recording that
 * format (on the shared NATS), and tests that publish change runs by hand publish them one per run
 * (`runs`).
 */
export const testChangeFormat: ChangeFormat = (() => {
  const v = process.env.FANFARE_TEST_CHANGES ?? LATEST_CHANGE_FORMAT
  if (v !== 'runs' && v !== 'batches' && v !== 'compressed') throw new Error(`FANFARE_TEST_CHANGES is runs, batches or compressed, not ${v}`)
  return v
})()

export type TestEnv = {
  config: Config
  /** Environment variables that make a child process use this test's database and streams. */
  vars: Record<string, string>
  cleanup: () => Promise<void>
}

/**
 * A fresh, migrated Postgres database and a unique stream name and subject prefix, so tests
 * never see each other's data. `overrides` are extra environment variables; `migrated: false`
 * leaves the database empty (what a node started before `npm run migrate` meets).
 */
export async function createTestEnv(overrides: Record<string, string> = {}, opts: { migrated?: boolean } = {}): Promise<TestEnv> {
  const id = `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`
  const dbName = `fanfare_t_${id}`
  const admin = postgres(TEST_PG_URL, { max: 1, onnotice: () => {} })
  await admin.unsafe(`CREATE DATABASE ${dbName}`)
  await admin.end()
  const url = new URL(TEST_PG_URL)
  url.pathname = `/${dbName}`
  const vars: Record<string, string> = {
    DATABASE_URL: url.toString(),
    NATS_URL: TEST_NATS_URL,
    FANFARE_STREAM: `T_${id}`,
    FANFARE_SUBJECT_PREFIX: `t_${id}`,
    FANFARE_INGEST_TOKEN: `ingest-token-${id}`,
    FANFARE_ADMIN_TOKEN: `admin-token-${id}`,
    FANFARE_JWT_SECRET: `jwt-secret-${id}-0123456789abcdef`,
    LOG_LEVEL: 'warn',
    ...overrides,
  }
  const config = loadConfig(vars)
  if (testChangeFormat !== LATEST_CHANGE_FORMAT) {
    const nc = await connect({ servers: TEST_NATS_URL })
    await ensureStreams(nc, config, { changes: testChangeFormat })
    await nc.close()
  }
  if (opts.migrated !== false) {
    const database = await connectPostgres(vars.DATABASE_URL, { max: 1 })
    await migrate(database)
    await database.close()
  }
  return {
    config,
    vars,
    cleanup: async () => {
      const nc = await connect({ servers: TEST_NATS_URL })
      const jsm = await jetstreamManager(nc)
      for (const stream of deploymentStreams(topology(config))) await jsm.streams.delete(stream).catch(() => {})
      await nc.close()
      const admin = postgres(TEST_PG_URL, { max: 1, onnotice: () => {} })
      await admin.unsafe(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`)
      await admin.end()
    },
  }
}
