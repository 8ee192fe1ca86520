import { describe, expect, test } from 'bun:test'
import { existsSync, readFileSync } from 'node:fs'
import { resolve } from 'node:path'
import Ajv from 'ajv'
import addFormats from 'ajv-formats'
import { parse } from 'yaml'
import { loadConfig } from '../core/config'
import { parseNatsServers } from '../core/net'
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

  test('defines every service Fanfare runs, the cluster profile\'s, and Prometheus and Grafana only in the observability profile', () => {
    const byProfile = (profile?: string) =>
      Object.keys(compose.services)
        .filter((name) => (profile ? compose.services[name].profiles?.includes(profile) : !compose.services[name].profiles))
        .sort()
    expect(byProfile()).toEqual(['api', 'migrate', 'nats', 'postgres', 'stream-workers'])
    expect(byProfile('cluster')).toEqual(['api-cluster', 'migrate-cluster', 'nats-1', 'nats-2', 'nats-3', 'stream-workers-cluster'])
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
    // It also upgrades the NATS side (core/upgrade.ts).
    expect(migrate.depends_on.nats.condition).toBe('service_healthy')
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

describe('compose.yaml, profile cluster', () => {
  const nodes = ['nats-1', 'nats-2', 'nats-3']
  const flag = (args: string[], name: string) => args[args.indexOf(name) + 1]

  test('three NATS servers with JetStream form one cluster, each with its name, store and healthcheck', () => {
    const volumes = new Set<string>()
    for (const name of nodes) {
      const svc = compose.services[name]
      expect(svc.image).toStartWith('nats:2.10')
      const args: string[] = svc.command
      expect(args).toContain('-js')
      expect(flag(args, '-sd')).toBe('/data')
      // JetStream clustering needs a server name; the cluster name and routes join the three.
      expect(flag(args, '--name')).toBe(name)
      expect(flag(args, '--cluster_name')).toBe('fanfare')
      expect(flag(args, '--cluster')).toBe('nats://0.0.0.0:6222')
      expect(flag(args, '--routes').split(',').sort()).toEqual(nodes.map((n) => `nats://${n}:6222`))
      expect(svc.healthcheck.test.join(' ')).toContain('/healthz')
      expect(svc.volumes).toHaveLength(1)
      volumes.add(svc.volumes[0].split(':')[0])
    }
    expect(volumes.size).toBe(3)
    for (const v of volumes) expect(compose.volumes).toHaveProperty(v)
  })

  test('Fanfare uses all three servers and 3 replicas; nothing starts before the cluster is healthy and migrated', () => {
    for (const name of ['migrate-cluster', 'api-cluster', 'stream-workers-cluster']) {
      const svc = compose.services[name]
      const env = loadConfig(Object.fromEntries(Object.entries(svc.environment).map(([k, v]) => [k, String(v).startsWith('${') ? undefined : String(v)])))
      expect(parseNatsServers(env.NATS_URL).servers).toEqual(nodes.map((n) => `nats://${n}:4222`))
      expect(env.FANFARE_REPLICAS).toBe(3)
      for (const node of nodes) expect(svc.depends_on[node].condition).toBe('service_healthy')
      expect(svc.environment.FANFARE_INGEST_TOKEN).toMatch(/^\$\{FANFARE_INGEST_TOKEN:\?/)
    }
    expect(compose.services['migrate-cluster'].command).toEqual(['bun', 'core/db/migrate-cli.ts'])
    expect(compose.services['migrate-cluster'].depends_on.postgres.condition).toBe('service_healthy')
    for (const name of ['api-cluster', 'stream-workers-cluster']) {
      expect(compose.services[name].depends_on['migrate-cluster'].condition).toBe('service_completed_successfully')
    }
    expect(compose.services['stream-workers-cluster'].deploy.replicas).toBeGreaterThan(1)
    expect(compose.services['api-cluster'].healthcheck.test.join(' ')).toContain('/readyz')
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
