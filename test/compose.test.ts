import { describe, expect, test } from 'bun:test'
import { existsSync, readFileSync } from 'node:fs'
import { resolve } from 'node:path'
import Ajv from 'ajv'
import addFormats from 'ajv-formats'
import { parse } from 'yaml'
import { createMetrics } from '../core/metrics'

// No Docker engine runs on the build machines: the compose file is checked against the Compose
// Specification's JSON schema. The reference copy lives in the shared folder beside the repository
// (CI keeps one next to the clone; FANFARE_SHARED_DIR overrides where); a clone without it uses the
// copy in test/fixtures (the public compose-spec schema, Apache-2.0).
const repoRoot = resolve(import.meta.dir, '..')
const sharedDir = process.env.FANFARE_SHARED_DIR ?? resolve(repoRoot, '../shared')
const sharedSchema = resolve(sharedDir, 'reference/compose-spec.schema.json')
const schemaPath = existsSync(sharedSchema) ? sharedSchema : resolve(repoRoot, 'test/fixtures/compose-spec.schema.json')

type Service = Record<string, any>
// Compose files use YAML merge keys (`<<: *anchor`), which YAML 1.2 only honours when asked.
const compose = parse(readFileSync(resolve(repoRoot, 'compose.yaml'), 'utf8'), { merge: true }) as {
  services: Record<string, Service>
  volumes?: Record<string, unknown>
}

describe('compose.yaml', () => {
  test('is valid against the Compose Specification schema', () => {
    expect(existsSync(schemaPath), `compose schema not found at ${schemaPath}`).toBe(true)
    const schema = JSON.parse(readFileSync(schemaPath, 'utf8'))
    expect(String(schema.$schema)).toContain('draft-07')
    // Ajv's default class is draft-07, but it knows the meta-schema only by its canonical
    // http://...# id; the schema names it https://... without '#'. Same draft: drop the pointer.
    delete schema.$schema
    // strict: false because the schema uses annotations Ajv does not know (e.g. `deprecated`).
    const ajv = new Ajv({ allErrors: true, strict: false })
    addFormats(ajv)
    const validate = ajv.compile(schema)
    const valid = validate(compose)
    expect(valid ? [] : validate.errors).toEqual([])
  })

  test('defines every service Fanfare runs; Prometheus and Grafana only in the observability profile', () => {
    const always = Object.entries(compose.services).filter(([, s]) => !s.profiles).map(([name]) => name)
    expect(always.sort()).toEqual(['api', 'migrate', 'nats', 'postgres', 'stream-workers'])
    expect(compose.services.prometheus.profiles).toEqual(['observability'])
    expect(compose.services.grafana.profiles).toEqual(['observability'])
  })

  test('runs more than one stream worker', () => {
    expect(compose.services['stream-workers'].deploy?.replicas).toBeGreaterThan(1)
  })

  test('postgres and nats have healthchecks and volumes', () => {
    for (const name of ['postgres', 'nats']) {
      const svc = compose.services[name]
      expect(Array.isArray(svc.healthcheck?.test) && svc.healthcheck.test.length > 1).toBe(true)
      expect(svc.volumes?.length).toBeGreaterThan(0)
    }
    expect(compose.services.postgres.healthcheck.test.join(' ')).toContain('pg_isready')
    expect(compose.services.nats.command).toEqual(['-js', '-sd', '/data', '-m', '8222'])
    expect(compose.services.nats.healthcheck.test.join(' ')).toContain('/healthz')
  })

  test('migrate runs once, after postgres is healthy; api and workers wait for it', () => {
    const { migrate, api } = compose.services
    expect(migrate.restart).toBe('no')
    expect(migrate.command).toEqual(['bun', 'core/db/migrate-cli.ts'])
    expect(migrate.depends_on.postgres.condition).toBe('service_healthy')
    for (const svc of [api, compose.services['stream-workers']]) {
      expect(svc.depends_on.migrate.condition).toBe('service_completed_successfully')
      expect(svc.depends_on.nats.condition).toBe('service_healthy')
    }
    expect(api.healthcheck.test.join(' ')).toContain('/readyz')
    expect(api.ports.some((p: string) => String(p).endsWith(':3000'))).toBe(true)
  })

  test('secrets are required from the environment, never defaulted', () => {
    for (const name of ['migrate', 'api', 'stream-workers']) {
      const env = compose.services[name].environment
      expect(env.DATABASE_URL).toStartWith('postgres://')
      expect(env.NATS_URL).toBe('nats://nats:4222')
      expect(env.FANFARE_INGEST_TOKEN).toMatch(/^\$\{FANFARE_INGEST_TOKEN:\?/)
      expect(env.FANFARE_ADMIN_TOKEN).toMatch(/^\$\{FANFARE_ADMIN_TOKEN:\?/)
    }
    expect(compose.services.postgres.environment.POSTGRES_PASSWORD).toMatch(/^\$\{POSTGRES_PASSWORD:\?/)
  })
})

describe('the observability profile', () => {
  const read = (path: string) => readFileSync(resolve(repoRoot, path), 'utf8')
  /** The host paths compose mounts into a service, by the container path. */
  const mounts = (svc: Service) => Object.fromEntries((svc.volumes as string[]).filter((v) => v.startsWith('./')).map((v) => [v.split(':')[1], v.split(':')[0]]))

  test('every Fanfare process serves metrics on FANFARE_METRICS_PORT, and Prometheus scrapes each service there', () => {
    const port = compose.services.api.environment.FANFARE_METRICS_PORT
    expect(port).toMatch(/^\d+$/)
    for (const name of ['api', 'stream-workers']) expect(compose.services[name].environment.FANFARE_METRICS_PORT).toBe(port)
    const prometheusYml = mounts(compose.services.prometheus)['/etc/prometheus/prometheus.yml']
    expect(existsSync(resolve(repoRoot, prometheusYml))).toBe(true)
    const config = parse(read(prometheusYml)) as { scrape_configs: any[] }
    const targets = config.scrape_configs.flatMap((c) => [
      ...(c.static_configs ?? []).flatMap((s: any) => s.targets),
      ...(c.dns_sd_configs ?? []).flatMap((d: any) => d.names.map((n: string) => `${n}:${d.port}`)),
    ])
    expect(targets.sort()).toEqual([`api:${port}`, `stream-workers:${port}`])
    // Not published: the unauthenticated port stays on the compose network.
    expect(JSON.stringify(compose.services.api.ports)).not.toContain(port)
  })

  test('Grafana is provisioned with the Prometheus data source and the dashboard kept in the repo', () => {
    const m = mounts(compose.services.grafana)
    const datasources = parse(read(`${m['/etc/grafana/provisioning']}/datasources/prometheus.yml`)) as { datasources: any[] }
    expect(datasources.datasources[0]).toMatchObject({ type: 'prometheus', url: 'http://prometheus:9090', uid: 'fanfare-prometheus' })
    const providers = parse(read(`${m['/etc/grafana/provisioning']}/dashboards/fanfare.yml`)) as { providers: any[] }
    expect(providers.providers[0].options.path).toBe('/var/lib/grafana/dashboards')
    expect(existsSync(resolve(repoRoot, m['/var/lib/grafana/dashboards'], 'fanfare.json'))).toBe(true)
  })

  test('the dashboard parses and queries only metrics the code registers (and shows every one of them)', async () => {
    const dashboard = JSON.parse(read('deploy/grafana/dashboards/fanfare.json'))
    const exprs: string[] = dashboard.panels.flatMap((p: any) => p.targets.map((t: any) => t.expr))
    expect(exprs.length).toBeGreaterThan(10)
    for (const p of dashboard.panels) for (const t of p.targets) expect(t.datasource.uid).toBe('fanfare-prometheus')
    const registered = (await createMetrics().registry.getMetricsAsJSON()).map((m) => ({ name: m.name, type: String(m.type) }))
    // What a scrape shows: a histogram `h` as h_bucket, h_sum and h_count.
    const series = new Set(registered.flatMap((m) => (m.type === 'histogram' ? [`${m.name}_bucket`, `${m.name}_sum`, `${m.name}_count`] : [m.name])))
    const used = new Set(exprs.flatMap((e) => e.match(/\bfanfare_[a-z_]+/g) ?? []))
    expect([...used].filter((name) => !series.has(name))).toEqual([])
    const shown = registered.filter((m) => [...used].some((u) => u === m.name || u.startsWith(`${m.name}_`))).map((m) => m.name)
    expect(shown.sort()).toEqual(registered.map((m) => m.name).sort())
  })
})

describe('Dockerfile', () => {
  const dockerfile = readFileSync(resolve(repoRoot, 'Dockerfile'), 'utf8')

  test('runs on the official Bun image as a non-root user, the API by default', () => {
    const froms = [...dockerfile.matchAll(/^FROM\s+(\S+)/gm)].map((m) => m[1])
    expect(froms.at(-1)).toStartWith('oven/bun:')
    const user = [...dockerfile.matchAll(/^USER\s+(\S+)/gm)].at(-1)?.[1]
    expect(user).toBeDefined()
    expect(['root', '0', '0:0']).not.toContain(user!)
    expect(dockerfile).toMatch(/^CMD \["bun", "api\/src\/main\.ts"\]$/m)
  })

  test('copies every file the commands in compose.yaml run', () => {
    for (const svc of ['migrate', 'api', 'stream-workers']) {
      const entry: string = compose.services[svc].command[1]
      const top = entry.split('/')[0]
      expect(dockerfile).toMatch(new RegExp(`^COPY .*\\b${top}\\b`, 'm'))
    }
    expect(dockerfile).toMatch(/^COPY .*migrations/m)
  })
})
