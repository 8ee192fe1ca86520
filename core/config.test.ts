import { expect, test } from 'bun:test'
import { Env, loadConfig, metricsHost, misspeltVariables } from './config'

test('a whole-number variable written as anything but decimal digits is refused, naming it', () => {
  // Value.Convert alone read these with parseInt: "864e5" (a day, meant) became 864 ms of retention.
  for (const value of ['864e5', '10.5', '0x10', '1_000', '5 0']) {
    expect(() => loadConfig({ FANFARE_EVENT_RETENTION_MS: value })).toThrow(`FANFARE_EVENT_RETENTION_MS: not a whole number in decimal digits (got ${JSON.stringify(value)})`)
  }
  expect(() => loadConfig({ FANFARE_BATCH_SIZE: '10.5' })).toThrow(/FANFARE_BATCH_SIZE: not a whole number/)
  expect(loadConfig({ FANFARE_EVENT_RETENTION_MS: '86400000', FANFARE_BATCH_SIZE: '+20' })).toMatchObject({ FANFARE_EVENT_RETENTION_MS: 86_400_000, FANFARE_BATCH_SIZE: 20 })
  // Whitespace around the digits passes, as it always did (a value read from a file ends in a newline).
  expect(loadConfig({ FANFARE_BATCH_SIZE: '20\n' }).FANFARE_BATCH_SIZE).toBe(20)
  // Fractional settings keep their fractions.
  expect(loadConfig({ OTEL_TRACES_SAMPLER_ARG: '0.25' }).OTEL_TRACES_SAMPLER_ARG).toBe(0.25)
})

test('a retention JetStream would refuse (under 100 ms, or shorter than the de-duplication window) is refused at start, naming both', () => {
  // JetStream refuses a duplicate window longer than max_age; the process used to die on its stack trace.
  expect(() => loadConfig({ FANFARE_EVENT_RETENTION_MS: '60000' })).toThrow(
    'FANFARE_EVENT_RETENTION_MS: 60000 is shorter than FANFARE_DEDUP_WINDOW_MS (120000)',
  )
  expect(() => loadConfig({ FANFARE_EVENT_RETENTION_MS: '50', FANFARE_DEDUP_WINDOW_MS: '1000' })).toThrow(/FANFARE_EVENT_RETENTION_MS: 50 is shorter than FANFARE_DEDUP_WINDOW_MS/)
  expect(loadConfig({ FANFARE_EVENT_RETENTION_MS: '2000', FANFARE_DEDUP_WINDOW_MS: '1000' }).FANFARE_EVENT_RETENTION_MS).toBe(2000)
  expect(loadConfig({ FANFARE_EVENT_RETENTION_MS: '0' }).FANFARE_EVENT_RETENTION_MS).toBe(0)
})

test('an age JetStream cannot hold in nanoseconds (past about 292 years) is refused at start, naming the variable', () => {
  // JetStream takes max_age as int64 nanoseconds; above it the process died on "invalid JSON".
  expect(() => loadConfig({ FANFARE_EVENT_RETENTION_MS: '10000000000000' })).toThrow(/FANFARE_EVENT_RETENTION_MS: Expected integer to be less or equal to 9223372036854/)
  expect(() => loadConfig({ FANFARE_HISTORY_TTL_MS: '10000000000000' })).toThrow(/FANFARE_HISTORY_TTL_MS: Expected integer to be less or equal/)
  expect(() => loadConfig({ FANFARE_HISTORY_TTL_MS_CHAT: '10000000000000' })).toThrow(/FANFARE_HISTORY_TTL_MS_CHAT: Expected integer to be less or equal/)
  expect(loadConfig({ FANFARE_EVENT_RETENTION_MS: '9223372036854' }).FANFARE_EVENT_RETENTION_MS).toBe(9_223_372_036_854)
})

test('a config error never prints a secret: tokens by their length, passwords in URLs masked', () => {
  const secrets = ['adminSECRETwith.dot-123456', 'ingestSECRET.x-1234567', 'shortJWT', 'dbPASSword77', 'natsPW42', 'tokenONLY99']
  const bad = {
    FANFARE_ADMIN_TOKEN: secrets[0],
    FANFARE_INGEST_TOKEN: secrets[1],
    FANFARE_JWT_SECRET: secrets[2],
    DATABASE_URL: `mysql://root:${secrets[3]}@db.example/fanfare`,
    DATABASE_READ_URL: `mysql://${secrets[5]}@replica.example/fanfare`,
    NATS_URL: `http://fanfare:${secrets[4]}@nats.example:4222`,
  }
  let message = ''
  try {
    loadConfig(bad)
  } catch (err) {
    message = (err as Error).message
  }
  for (const key of Object.keys(bad)) expect(message).toContain(key)
  for (const secret of secrets) expect(message).not.toContain(secret)
  expect(message).toContain('FANFARE_ADMIN_TOKEN')
  expect(message).toContain('<hidden, 26 characters>')
  expect(message).toContain('mysql://root:***@db.example/fanfare')
  expect(message).toContain('mysql://***@replica.example/fanfare')
})

test('FANFARE_JWT_SECRET is measured in bytes, as HS256 signs with it (UTF-8): 32 bytes pass whatever the characters, 31 do not', () => {
  // 20 characters, 40 bytes: refused before as shorter than 32 characters.
  expect(loadConfig({ FANFARE_JWT_SECRET: 'é'.repeat(20) }).FANFARE_JWT_SECRET).toBe('é'.repeat(20))
  expect(loadConfig({ FANFARE_JWT_SECRET: 'x'.repeat(32) }).FANFARE_JWT_SECRET).toBe('x'.repeat(32))
  expect(() => loadConfig({ FANFARE_JWT_SECRET: 'x'.repeat(31) })).toThrow('FANFARE_JWT_SECRET: at least 32 bytes (got <hidden, 31 characters>, 31 bytes)')
  expect(() => loadConfig({ FANFARE_JWT_SECRET: 'é'.repeat(15) + 'x' })).toThrow(/FANFARE_JWT_SECRET: at least 32 bytes .*31 bytes/)
})

test('FANFARE_JWT_PREVIOUS_SECRET: at least 32 bytes like the secret, never shown, only next to a different FANFARE_JWT_SECRET', () => {
  const current = 'c'.repeat(32)
  expect(loadConfig({ FANFARE_JWT_SECRET: current, FANFARE_JWT_PREVIOUS_SECRET: 'é'.repeat(16) }).FANFARE_JWT_PREVIOUS_SECRET).toBe('é'.repeat(16))
  expect(() => loadConfig({ FANFARE_JWT_SECRET: current, FANFARE_JWT_PREVIOUS_SECRET: 'oldSECRET31'.padEnd(31, 'x') })).toThrow(
    'FANFARE_JWT_PREVIOUS_SECRET: at least 32 bytes (got <hidden, 31 characters>, 31 bytes)',
  )
  expect(() => loadConfig({ FANFARE_JWT_PREVIOUS_SECRET: 'p'.repeat(32) })).toThrow(/FANFARE_JWT_PREVIOUS_SECRET: set only during a rotation, next to FANFARE_JWT_SECRET/)
  expect(() => loadConfig({ FANFARE_JWT_SECRET: current, FANFARE_JWT_PREVIOUS_SECRET: current })).toThrow(/FANFARE_JWT_PREVIOUS_SECRET: the same as FANFARE_JWT_SECRET/)
  let message = ''
  try {
    loadConfig({ FANFARE_JWT_SECRET: 'oldSECRET-but-too-short', FANFARE_JWT_PREVIOUS_SECRET: 'oldSECRET-but-too-short' })
  } catch (err) {
    message = (err as Error).message
  }
  expect(message).toContain('FANFARE_JWT_PREVIOUS_SECRET: at least 32 bytes')
  expect(message).not.toContain('oldSECRET')
})

test('misspelt variables are found with the one meant; a tool\'s own FANFARE_ variables are not', () => {
  const env = {
    FANFARE_PARTITONS: '4',
    fanfare_partitions: '4',
    NATS_URLS: 'nats://x:4222',
    FANFARE_DEDUP_WINDOW: '1000',
    FANFARE_PARTITIONS: '4',
    FANFARE_TEST_PG_URL: 'postgres://x',
    FANFARE_FUZZ_RUNS: '10',
    FANFARE_BENCH_PROFILE: '1',
    OTEL_EXPORTER_OTLP_HEADERS: 'a=b',
    PATH: '/bin',
  }
  expect(misspeltVariables(env)).toEqual([
    { name: 'FANFARE_PARTITONS', meant: 'FANFARE_PARTITIONS' },
    { name: 'fanfare_partitions', meant: 'FANFARE_PARTITIONS' },
    { name: 'NATS_URLS', meant: 'NATS_URL' },
    { name: 'FANFARE_DEDUP_WINDOW', meant: 'FANFARE_DEDUP_WINDOW_MS' },
  ])
})

test('FANFARE_METRICS_HOST: an address or host name to listen on, HOST when unset; a port, a scheme or brackets are refused, naming it', () => {
  expect(metricsHost(loadConfig({}))).toBe('0.0.0.0')
  expect(metricsHost(loadConfig({ HOST: '10.0.0.5' }))).toBe('10.0.0.5')
  for (const host of ['127.0.0.1', '::1', '0.0.0.0', '::', 'localhost', 'metrics.internal', 'fe80::1%eth0']) {
    expect(metricsHost(loadConfig({ HOST: '0.0.0.0', FANFARE_METRICS_HOST: host }))).toBe(host)
  }
  for (const host of ['127.0.0.1:9464', 'http://127.0.0.1', '[::1]', 'metrics host', '999.1.1.1', '-metrics']) {
    expect(() => loadConfig({ FANFARE_METRICS_HOST: host })).toThrow(`FANFARE_METRICS_HOST: ${JSON.stringify(host)} is not an address or host name to listen on`)
  }
})

test('the README documents every variable, and documents none that the config does not read', async () => {
  const readme = await Bun.file(new URL('../README.md', import.meta.url)).text()
  const keys = Object.keys(Env.properties)
  // Each is named in backquotes: a row of a variables table, or the paragraph that explains it.
  expect(keys.filter((k) => !readme.includes(`\`${k}\``))).toEqual([])
  // A table row naming a variable that the config does not know would send operators after a setting that does nothing.
  const rows = [...readme.matchAll(/^\| ((?:`[A-Z][A-Z0-9_]+`(?:, )?)+) \|/gm)].flatMap((m) => [...m[1].matchAll(/`([A-Z0-9_]+)`/g)].map((x) => x[1]))
  const settings = rows.filter((r) => /^(FANFARE_|DATABASE_|NATS_|OTEL_|PORT$|HOST$|LOG_)/.test(r))
  expect(settings.length).toBeGreaterThan(50)
  expect(settings.filter((r) => !keys.includes(r))).toEqual([])
})
