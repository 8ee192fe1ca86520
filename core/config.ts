import { Type, type Static } from '@sinclair/typebox'
import { Value, ValuePointer } from '@sinclair/typebox/value'
import { listenHostProblem, parseCidrs, parseNatsServers, parseOrigins } from './net'
import { StartFailure } from './start-failure'

/** A JetStream domain name (it becomes a subject token: `$JS.<domain>.API`). */
const DOMAIN = '^[A-Za-z0-9_-]{1,64}$'
/** A bootstrap token: no '.' (see FANFARE_INGEST_TOKEN). */
const BOOTSTRAP_TOKEN = '^[^.]+$'
/**
 * The longest age JetStream can hold (a stream's max_age is int64 nanoseconds, about 292 years):
 * past it the stream update fails with a bare "invalid JSON".
 */
const MAX_AGE_MS = Math.floor(Number(2n ** 63n - 1n) / 1e6)

/**
 * The whole environment Fanfare reads, as one TypeBox schema. Parsed once in `main`; nothing else
 * reads `process.env`. Unset optional values take the defaults below.
 */
export const Env = Type.Object({
  PORT: Type.Integer({ minimum: 0, maximum: 65535, default: 3000 }),
  HOST: Type.String({ minLength: 1, default: '0.0.0.0' }),
  /** Postgres URL. Unset: embedded PGlite under FANFARE_DATA_DIR (all-in-one mode only). */
  DATABASE_URL: Type.Optional(Type.String({ pattern: '^postgres(ql)?://' })),
  /**
   * A Postgres URL for reads only (a read replica), used for channel snapshots and REST reads;
   * everything else uses DATABASE_URL. Unset: DATABASE_URL. A replica's lag is handled by the
   * realtime layer (a snapshot older than what subscribers have is read again).
   */
  DATABASE_READ_URL: Type.Optional(Type.String({ pattern: '^postgres(ql)?://' })),
  /**
   * Workers and API nodes: how long Postgres may leave a `select 1` unanswered (a host that
   * vanished, a network partition, a stalled proxy: packets dropped, no reset) before the process
   * drops its connections, which fails the queries waiting on them (see watchDatabase), and how
   * long opening a connection may take (whole seconds).
   */
  FANFARE_DATABASE_TIMEOUT_MS: Type.Integer({ minimum: 1000, maximum: 600_000, default: 5000 }),
  /**
   * NATS server URL, or several comma-separated (the servers of a cluster: the client tries them
   * in turn and learns the others from the cluster). Unset: a local nats-server with JetStream is
   * started (all-in-one mode only).
   */
  NATS_URL: Type.Optional(Type.String({ pattern: '^(nats|tls)://' })),
  /**
   * Replicas of every stream and KV bucket Fanfare creates: 1 on a single nats-server, 3 (or 5) on
   * a cluster, where a stream then survives the loss of a minority of its servers. Applied when a
   * stream is created (ensureStreams) and to existing streams and buckets by `npm run migrate` only.
   */
  FANFARE_REPLICAS: Type.Integer({ minimum: 1, maximum: 5, default: 1 }),
  /**
   * Bearer token for publishing events over REST and for scores over WebSocket. Without a '.':
   * a credential with one (a JWT) is then never compared with the bootstrap tokens (a hash each).
   */
  FANFARE_INGEST_TOKEN: Type.Optional(Type.String({ minLength: 16, pattern: BOOTSTRAP_TOKEN })),
  /** Bearer token for /admin; without a '.', as FANFARE_INGEST_TOKEN. */
  FANFARE_ADMIN_TOKEN: Type.Optional(Type.String({ minLength: 16, pattern: BOOTSTRAP_TOKEN })),
  /**
   * Players' and viewers' tokens: HS256 JWTs signed with this secret (at least 32 bytes), and/or
   * tokens whose keys FANFARE_JWKS_URL serves (RS256, ES256, EdDSA). Neither set: no user tokens.
   */
  FANFARE_JWT_SECRET: Type.Optional(Type.String()),
  /**
   * While the secret is rotated: the secret FANFARE_JWT_SECRET replaces (at least 32 bytes, and
   * only with FANFARE_JWT_SECRET set). Tokens signed with either are accepted; a token whose
   * signature the current secret refuses is checked with this one. Remove it once the tokens signed
   * with it have expired (README "Rotating the JWT secret").
   */
  FANFARE_JWT_PREVIOUS_SECRET: Type.Optional(Type.String()),
  FANFARE_JWKS_URL: Type.Optional(Type.String({ pattern: '^https?://' })),
  /** When set, a user token's `iss` / `aud` must be this. */
  FANFARE_JWT_ISSUER: Type.Optional(Type.String({ minLength: 1 })),
  FANFARE_JWT_AUDIENCE: Type.Optional(Type.String({ minLength: 1 })),
  /** `subscribe`: clients without a token may watch public channels (never publish); `off`: refused. */
  FANFARE_ANONYMOUS: Type.Union([Type.Literal('subscribe'), Type.Literal('off')], { default: 'subscribe' }),
  /** How long before a user token expires its WebSocket is told `token_expiring`. */
  FANFARE_TOKEN_WARNING_MS: Type.Integer({ minimum: 1000, maximum: 3600_000, default: 30_000 }),
  /** How long a WebSocket opened without a token may wait before its `auth` frame (when anonymous is off). */
  FANFARE_AUTH_TIMEOUT_MS: Type.Integer({ minimum: 1000, maximum: 600_000, default: 10_000 }),
  /**
   * `on`: the demo page at /demo, and its sign-in (POST /demo/session), which mints a user token
   * for any name it is given. For trying Fanfare out on your own machine, never on a public server.
   * Unset: on in `npm start`'s all-in-one mode, off otherwise.
   */
  FANFARE_DEMO: Type.Optional(Type.Union([Type.Literal('on'), Type.Literal('off')])),
  FANFARE_DATA_DIR: Type.String({ minLength: 1, default: './.data' }),
  /** JetStream stream holding events; tests give each run its own. */
  FANFARE_STREAM: Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$', default: 'FANFARE' }),
  /** Prefix of every NATS subject Fanfare uses. */
  FANFARE_SUBJECT_PREFIX: Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$', default: 'fanfare' }),
  /** Number of partitions keys are hashed into. Fixed for the life of a stream. */
  FANFARE_PARTITIONS: Type.Integer({ minimum: 1, maximum: 1024, default: 8 }),
  /**
   * JetStream de-duplication window: a resent event id inside it is reported duplicate. This and
   * the retention, history, replicas and edge domains below are settings of the shared streams:
   * given to a stream when created, changed by `npm run migrate` only; a node uses the stream's (see
   * core/stream-settings.ts).
   */
  FANFARE_DEDUP_WINDOW_MS: Type.Integer({ minimum: 1000, maximum: 7 * 24 * 3600_000, default: 120_000 }),
  /** How long the event stream keeps events (0 = forever). Bounds what a rebuild can replay. */
  FANFARE_EVENT_RETENTION_MS: Type.Integer({ minimum: 0, maximum: MAX_AGE_MS, default: 0 }),
  /** Change notices kept per channel, and for how long (defaults for every channel kind). */
  FANFARE_HISTORY_SIZE: Type.Integer({ minimum: 1, maximum: 100_000, default: 1000 }),
  FANFARE_HISTORY_TTL_MS: Type.Integer({ minimum: 1000, maximum: MAX_AGE_MS, default: 24 * 3600_000 }),
  /** Per channel kind overrides of the two above (unset: the defaults). */
  FANFARE_HISTORY_SIZE_LEADERBOARD: Type.Optional(Type.Integer({ minimum: 1, maximum: 100_000 })),
  FANFARE_HISTORY_TTL_MS_LEADERBOARD: Type.Optional(Type.Integer({ minimum: 1000, maximum: MAX_AGE_MS })),
  FANFARE_HISTORY_SIZE_CHAT: Type.Optional(Type.Integer({ minimum: 1, maximum: 100_000 })),
  FANFARE_HISTORY_TTL_MS_CHAT: Type.Optional(Type.Integer({ minimum: 1000, maximum: MAX_AGE_MS })),
  /** Streams and polls have their own defaults (300 runs, 1 hour: see historyRetention). */
  FANFARE_HISTORY_SIZE_STREAM: Type.Optional(Type.Integer({ minimum: 1, maximum: 100_000 })),
  FANFARE_HISTORY_TTL_MS_STREAM: Type.Optional(Type.Integer({ minimum: 1000, maximum: MAX_AGE_MS })),
  FANFARE_HISTORY_SIZE_POLL: Type.Optional(Type.Integer({ minimum: 1, maximum: 100_000 })),
  FANFARE_HISTORY_TTL_MS_POLL: Type.Optional(Type.Integer({ minimum: 1000, maximum: MAX_AGE_MS })),
  FANFARE_HISTORY_SIZE_REACTIONS: Type.Optional(Type.Integer({ minimum: 1, maximum: 100_000 })),
  FANFARE_HISTORY_TTL_MS_REACTIONS: Type.Optional(Type.Integer({ minimum: 1000, maximum: MAX_AGE_MS })),
  /**
   * `reactions:<stream>` subscribers get at most one update per this many ms, carrying the
   * window's counts per emoji and the running totals (however many reactions arrived).
   */
  FANFARE_REACTION_WINDOW_MS: Type.Integer({ minimum: 50, maximum: 60_000, default: 1000 }),
  /** Largest accepted HTTP body or WebSocket frame. */
  FANFARE_MAX_BODY_BYTES: Type.Integer({ minimum: 1024, maximum: 64 * 1024 * 1024, default: 1024 * 1024 }),
  /**
   * Events one API node may have waiting for JetStream's acknowledgement at once. Past it a
   * request gets 503 `overloaded` at once instead of joining a queue that would time out.
   */
  FANFARE_INGEST_MAX_IN_FLIGHT: Type.Integer({ minimum: 500, maximum: 1_000_000, default: 20_000 }),
  /** Partition lease time-to-live: how soon a dead worker's partitions move to a live one. */
  FANFARE_LEASE_TTL_MS: Type.Integer({ minimum: 1000, maximum: 600_000, default: 10_000 }),
  /** Most events a worker applies in one transaction. */
  FANFARE_BATCH_SIZE: Type.Integer({ minimum: 1, maximum: 5000, default: 500 }),
  /**
   * How often the holder of partition 0's lease looks for messages stored on event subjects no
   * projection consumes (and once when it takes the lease): a stream info or two per look (the
   * last sequence, then the subject list), and a read of the strays only. A stray becomes a dead letter within about this long.
   */
  FANFARE_UNCLAIMED_POLL_MS: Type.Integer({ minimum: 100, maximum: 600_000, default: 5_000 }),
  /**
   * Subscribes (resumes included) one WebSocket connection may make per second, after a burst of
   * as many as it may hold (100): each costs the node a snapshot or history read.
   */
  FANFARE_WS_SUBSCRIBES_PER_SECOND: Type.Integer({ minimum: 1, maximum: 10_000, default: 20 }),
  /**
   * Events one user's WebSocket may publish per second, after a burst of FANFARE_WS_PUBLISH_BURST.
   * (A key's sockets share the key's budget instead: see FANFARE_KEY_OPS_PER_SECOND.)
   */
  FANFARE_WS_PUBLISHES_PER_SECOND: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 20 }),
  FANFARE_WS_PUBLISH_BURST: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 50 }),
  /**
   * One budget per user over all their WebSockets and REST calls, on every API node (shared over
   * NATS): each event published, each subscribe and each other REST request costs one.
   */
  FANFARE_USER_OPS_PER_SECOND: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 50 }),
  FANFARE_USER_OPS_BURST: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 200 }),
  /** The same budget per API key (the bootstrap tokens included): game servers publish far more. */
  FANFARE_KEY_OPS_PER_SECOND: Type.Integer({ minimum: 1, maximum: 10_000_000, default: 10_000 }),
  FANFARE_KEY_OPS_BURST: Type.Integer({ minimum: 1, maximum: 10_000_000, default: 20_000 }),
  /**
   * The same budget per client address for anonymous callers (viewers without a token), over all
   * their sockets' subscribes and their REST reads: each costs the node a Postgres or history read.
   * Generous, since many viewers may share an address (a NAT, a carrier).
   */
  FANFARE_ANONYMOUS_OPS_PER_SECOND: Type.Integer({ minimum: 1, maximum: 10_000_000, default: 100 }),
  FANFARE_ANONYMOUS_OPS_BURST: Type.Integer({ minimum: 1, maximum: 10_000_000, default: 500 }),
  /**
   * Sustained abuse: a WebSocket whose refused commands, within FANFARE_WS_ABUSE_WINDOW_MS, exceed
   * FANFARE_WS_ABUSE_FACTOR times what its limits allow in that time is closed with 4029.
   */
  FANFARE_WS_ABUSE_FACTOR: Type.Number({ minimum: 1, maximum: 1000, default: 3 }),
  FANFARE_WS_ABUSE_WINDOW_MS: Type.Integer({ minimum: 1000, maximum: 600_000, default: 5000 }),
  /** WebSockets open at once over all API nodes (shared over NATS), per client address and per user. */
  FANFARE_MAX_CONNECTIONS_PER_IP: Type.Integer({ minimum: 1, maximum: 10_000_000, default: 500 }),
  FANFARE_MAX_CONNECTIONS_PER_USER: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 10 }),
  /** WebSocket upgrades one client address may attempt per second on one node, after a burst. */
  FANFARE_IP_CONNECTS_PER_SECOND: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 20 }),
  FANFARE_IP_CONNECT_BURST: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 100 }),
  /**
   * Failed credential checks (401 `invalid_token` / `revoked` / malformed Authorization) one client
   * address may make per minute over all API nodes, after a burst of as many; past it the address gets 429
   * for any credential until it refills, with no key looked up.
   */
  FANFARE_AUTH_FAILURES_PER_MINUTE: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 20 }),
  /**
   * Comma-separated CIDRs of the proxies whose `X-Forwarded-For` is believed. Unset: none; the
   * client address is the peer's.
   */
  FANFARE_TRUSTED_PROXIES: Type.Optional(Type.String()),
  /**
   * Comma-separated origins (`https://game.example`) browsers may call from: a WebSocket upgrade
   * or REST request with another `Origin` is refused with 403. Unset: any origin.
   */
  FANFARE_ALLOWED_ORIGINS: Type.Optional(Type.String()),
  /** Presence: channels of at most this many users list their members (bigger ones: counts only). */
  FANFARE_PRESENCE_MAX_MEMBERS: Type.Integer({ minimum: 0, maximum: 10_000, default: 100 }),
  /** Presence: at most one count update per this many ms for a channel's presence subscribers. */
  FANFARE_PRESENCE_INTERVAL_MS: Type.Integer({ minimum: 100, maximum: 60_000, default: 1000 }),
  /** Presence: an API node not heard from for this long is lost; its users leave (`node_lost`), its sockets no longer count against the limits. */
  FANFARE_PRESENCE_TTL_MS: Type.Integer({ minimum: 1000, maximum: 600_000, default: 10_000 }),
  /** Presence: how long a user whose last connection closed stays present (a page reload is no leave). */
  FANFARE_PRESENCE_GRACE_MS: Type.Integer({ minimum: 0, maximum: 600_000, default: 5000 }),
  /**
   * Matches: how long a seated player whose connections to `match:<id>` all closed (on every node)
   * keeps their seat before leaving. Measured in event time (carried in the disconnect event).
   */
  FANFARE_MATCH_GRACE_MS: Type.Integer({ minimum: 0, maximum: 86_400_000, default: 30_000 }),
  /**
   * Matches: how long a player who joined keeps the seat before their first connection to
   * `match:<id>` (a join that never shows up stops squatting it). Measured in event time (stamped
   * in the join event).
   */
  FANFARE_MATCH_JOIN_GRACE_MS: Type.Integer({ minimum: 1000, maximum: 86_400_000, default: 60_000 }),
  /** Bytes a WebSocket may have queued before it is cut off and must re-sync. */
  FANFARE_WS_BACKPRESSURE_BYTES: Type.Integer({ minimum: 1024, default: 1024 * 1024 }),
  /**
   * Seconds a WebSocket client may go unheard (no frame, no pong) before it is closed with 4012,
   * whatever the node sends it: the node pings a quiet client from half of it on, and every
   * WebSocket client answers by itself (see api/src/realtime/liveness.ts). What finds a client
   * whose network went away without a close (its presence then leaves after the grace); Bun's own
   * default, 120 s, kept such a ghost present for two minutes. 8 to 960 (Bun's limits: it is also
   * Bun's idle timeout, a backstop).
   */
  FANFARE_WS_IDLE_TIMEOUT_S: Type.Integer({ minimum: 8, maximum: 960, default: 30 }),
  /**
   * API nodes: seconds a JetStream outage (the event stream's info or a change feed not answering,
   * as while a NATS cluster elects a stream leader: 7-15 s measured) leaves /readyz 200 `degraded`
   * before it answers 503 `not_ready`. Every node sees such an outage alike: failing at once would
   * take every node out of a balancer together. 0: not ready at once. This node's own faults
   * (Postgres, its NATS connection down past 3 s, denied subscriptions) are not ready at once.
   */
  FANFARE_READY_GRACE_S: Type.Integer({ minimum: 0, maximum: 3600, default: 30 }),
  /**
   * Edge site (on an API node at the edge): the JetStream domain of the leaf nats-server NATS_URL
   * points at. The node stores events in that domain (202 = stored at the edge) and reads change
   * runs from mirrors there of the hub's change streams. See README "Running at the edge".
   */
  FANFARE_EDGE_DOMAIN: Type.Optional(Type.String({ pattern: DOMAIN })),
  /** Edge site: the hub's JetStream domain, where the edge's change-stream mirrors read from. */
  FANFARE_HUB_DOMAIN: Type.String({ pattern: DOMAIN, default: 'hub' }),
  /**
   * Hub (on every hub process: workers and API nodes): comma-separated JetStream domains of the
   * edge sites whose events the hub's event stream sources. Unset: the stream's sources are left
   * as they are.
   */
  FANFARE_EDGE_DOMAINS: Type.Optional(Type.String()),
  /**
   * A port on which this process (API node, stream workers or all-in-one) serves `GET /metrics`
   * (Prometheus text) without authentication, for a scraper on a private network. Unset: none (an
   * API node still serves `/metrics` on its own port to admin:read credentials).
   */
  FANFARE_METRICS_PORT: Type.Optional(Type.Integer({ minimum: 0, maximum: 65535 })),
  /**
   * The address the FANFARE_METRICS_PORT listener binds (an IP address or a host name). Unset: HOST,
   * as before it existed. Set it to keep the unauthenticated metrics private while the API listens
   * on every address: `127.0.0.1`, or the address of the scrape network.
   */
  FANFARE_METRICS_HOST: Type.Optional(Type.String({ minLength: 1 })),
  /** Traces go over OTLP/HTTP to this base URL (`/v1/traces` is added). Unset (and no traces endpoint): tracing is off. */
  OTEL_EXPORTER_OTLP_ENDPOINT: Type.Optional(Type.String({ pattern: '^https?://' })),
  /** The full URL for traces, taking precedence over OTEL_EXPORTER_OTLP_ENDPOINT. */
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: Type.Optional(Type.String({ pattern: '^https?://' })),
  OTEL_EXPORTER_OTLP_PROTOCOL: Type.Union([Type.Literal('http/protobuf'), Type.Literal('http/json')], { default: 'http/protobuf' }),
  /** The service name on every span (default: fanfare-api, fanfare-workers or fanfare). */
  OTEL_SERVICE_NAME: Type.Optional(Type.String({ minLength: 1 })),
  OTEL_TRACES_SAMPLER: Type.Union(
    ['always_on', 'always_off', 'traceidratio', 'parentbased_always_on', 'parentbased_always_off', 'parentbased_traceidratio'].map((l) => Type.Literal(l)),
    { default: 'parentbased_always_on' },
  ),
  /** The ratio of the `*traceidratio` samplers, 0..1 (default 1). */
  OTEL_TRACES_SAMPLER_ARG: Type.Optional(Type.Number({ minimum: 0, maximum: 1 })),
  /** Logs: `json` (one JSON object a line), `pretty` (for people), or `auto`: pretty when stdout is a terminal. */
  FANFARE_LOG_FORMAT: Type.Union([Type.Literal('auto'), Type.Literal('json'), Type.Literal('pretty')], { default: 'auto' }),
  LOG_LEVEL: Type.Union(
    ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((l) => Type.Literal(l)),
    { default: 'info' },
  ),
})
export type Env = Static<typeof Env>

/** Config: the parsed environment. Tokens are always set once `main` has resolved defaults. */
export type Config = Env

export class ConfigError extends StartFailure {
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n  ${problems.join('\n  ')}`)
    this.name = 'ConfigError'
  }
}

/** Variables whose whole value is a secret: a config error says how long it is, never what. */
const SECRETS = new Set(['FANFARE_INGEST_TOKEN', 'FANFARE_ADMIN_TOKEN', 'FANFARE_JWT_SECRET', 'FANFARE_JWT_PREVIOUS_SECRET'])

/**
 * A variable's value as a config error may print it (on stderr, often kept in a log): a secret by
 * its length, a URL with its password (or token) masked, anything else as it is.
 */
export function shownValue(key: string, value: unknown): string {
  if (typeof value !== 'string') return JSON.stringify(value)
  if (SECRETS.has(key)) return `<hidden, ${value.length} characters>`
  return JSON.stringify(value.replace(/\/\/([^/@]*)@/, (_, login: string) => `//${login.includes(':') ? `${login.slice(0, login.indexOf(':'))}:***` : '***'}@`))
}

/**
 * Parses an environment (process.env by default) into a Config. Empty strings count as unset.
 * Throws ConfigError listing every bad variable by name.
 */
export function loadConfig(source: Record<string, string | undefined> = process.env): Config {
  const raw: Record<string, unknown> = {}
  const problems: string[] = []
  for (const [key, schema] of Object.entries(Env.properties)) {
    const value = source[key]
    if (value === undefined || value === '') continue
    // Value.Convert reads an integer with parseInt, which stops at the first stray character:
    // "864e5" (a day, meant) would be 864 ms and "10.5" silently 10. Only plain digits pass
    // (around them whitespace, as before: a value read from a file often ends in a newline).
    if ((schema as { type?: string }).type === 'integer' && !/^\s*[+-]?[0-9]+\s*$/.test(value)) {
      problems.push(`${key}: not a whole number in decimal digits (got ${shownValue(key, value)})`)
      continue
    }
    raw[key] = value
  }
  const converted = Value.Convert(Env, Value.Default(Env, raw))
  problems.push(
    ...[...Value.Errors(Env, converted)]
      // A variable refused above is not also reported missing or of the wrong type.
      .filter((e) => !problems.some((p) => p.startsWith(`${e.path.slice(1)}: `)))
      .map((e) => `${e.path.slice(1) || '(root)'}: ${e.message} (got ${shownValue(e.path.slice(1), ValuePointer.Get(converted, e.path))})`),
  )
  // Lists a schema cannot check: each entry must parse (core/net.ts).
  const lists = converted as Partial<Env>
  for (const p of parseCidrs(lists.FANFARE_TRUSTED_PROXIES).problems) problems.push(`FANFARE_TRUSTED_PROXIES: ${p}`)
  for (const p of parseOrigins(lists.FANFARE_ALLOWED_ORIGINS).problems) problems.push(`FANFARE_ALLOWED_ORIGINS: ${p}`)
  for (const p of parseNatsServers(lists.NATS_URL).problems) problems.push(`NATS_URL: ${p}`)
  for (const p of parseDomains(lists.FANFARE_EDGE_DOMAINS).problems) problems.push(`FANFARE_EDGE_DOMAINS: ${p}`)
  const metricsHost = lists.FANFARE_METRICS_HOST === undefined ? undefined : listenHostProblem(lists.FANFARE_METRICS_HOST)
  if (metricsHost) problems.push(`FANFARE_METRICS_HOST: ${metricsHost}`)
  // HS256 signs with the secret's UTF-8 bytes: a length in characters would refuse 40 bytes of "é".
  for (const key of ['FANFARE_JWT_SECRET', 'FANFARE_JWT_PREVIOUS_SECRET'] as const) {
    const secret = lists[key]
    if (typeof secret === 'string' && Buffer.byteLength(secret) < 32) {
      problems.push(`${key}: at least 32 bytes (got ${shownValue(key, secret)}, ${Buffer.byteLength(secret)} bytes)`)
    }
  }
  // A previous secret alone would verify the old tokens while nothing can mint new ones; one equal
  // to the current secret is a rotation that was never made.
  if (lists.FANFARE_JWT_PREVIOUS_SECRET && !lists.FANFARE_JWT_SECRET) {
    problems.push('FANFARE_JWT_PREVIOUS_SECRET: set only during a rotation, next to FANFARE_JWT_SECRET (the new secret), which is unset')
  }
  if (lists.FANFARE_JWT_PREVIOUS_SECRET && lists.FANFARE_JWT_PREVIOUS_SECRET === lists.FANFARE_JWT_SECRET) {
    problems.push('FANFARE_JWT_PREVIOUS_SECRET: the same as FANFARE_JWT_SECRET; during a rotation FANFARE_JWT_SECRET is the new secret and this the old one')
  }
  if (lists.FANFARE_EDGE_DOMAIN && lists.FANFARE_EDGE_DOMAINS) {
    problems.push('FANFARE_EDGE_DOMAIN and FANFARE_EDGE_DOMAINS: a node is either at an edge site or at the hub, not both')
  }
  if (lists.FANFARE_EDGE_DOMAIN && lists.FANFARE_EDGE_DOMAIN === lists.FANFARE_HUB_DOMAIN) {
    problems.push(`FANFARE_EDGE_DOMAIN: the edge needs a JetStream domain of its own, not the hub's (${lists.FANFARE_HUB_DOMAIN})`)
  }
  // JetStream refuses an event stream whose de-duplication window is longer than its max_age (and
  // a max_age under 100 ms, which this covers): say so here rather than die on its error at start.
  const retention = lists.FANFARE_EVENT_RETENTION_MS
  const dedupWindow = lists.FANFARE_DEDUP_WINDOW_MS
  if (typeof retention === 'number' && typeof dedupWindow === 'number' && retention > 0 && retention < dedupWindow) {
    problems.push(
      `FANFARE_EVENT_RETENTION_MS: ${retention} is shorter than FANFARE_DEDUP_WINDOW_MS (${dedupWindow}); JetStream keeps ids for de-duplication only while it keeps their events: raise the retention (0 keeps events forever) or lower the window`,
    )
  }
  if (problems.length > 0) throw new ConfigError(problems)
  return converted as Config
}

/** The address the metrics listener (FANFARE_METRICS_PORT) binds: FANFARE_METRICS_HOST, else HOST. */
export const metricsHost = (config: Pick<Config, 'HOST' | 'FANFARE_METRICS_HOST'>): string => config.FANFARE_METRICS_HOST ?? config.HOST

/**
 * Variables of `source` that look like a misspelt Fanfare variable (`FANFARE_PARTITONS`), each
 * with the one meant: loadConfig never reads them, so the setting silently keeps its default.
 * Each process logs a warning per such variable at start (warnMisspeltVariables).
 * Only near misses (at most two letters added, dropped, changed or swapped, or the unit `_MS` left
 * out) of names it knows:
 * other `FANFARE_*` variables (a tool's own) are left alone.
 */
export function misspeltVariables(source: Record<string, string | undefined> = process.env): { name: string; meant: string }[] {
  const known = Object.keys(Env.properties)
  const out: { name: string; meant: string }[] = []
  for (const name of Object.keys(source)) {
    if (known.includes(name) || !/^(FANFARE_|DATABASE_|NATS_|OTEL_)/i.test(name)) continue
    const upper = name.toUpperCase()
    const meant = known.find((k) => editDistance(upper, k) <= 2 || k === `${upper}_MS`)
    if (meant) out.push({ name, meant })
  }
  return out
}

/** Logs a warning for each variable misspeltVariables finds in `source`. */
export function warnMisspeltVariables(logger: { warn: (obj: object, msg: string) => void }, source: Record<string, string | undefined> = process.env) {
  for (const { name, meant } of misspeltVariables(source)) {
    logger.warn({ variable: name, meant }, `${name} is not a Fanfare variable and is ignored: did you mean ${meant}?`)
  }
}

/** Optimal string alignment distance: insertions, deletions, substitutions and adjacent swaps. */
function editDistance(a: string, b: string): number {
  if (Math.abs(a.length - b.length) > 2) return 3
  const d = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)))
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1)
    }
  }
  return d[a.length][b.length]
}

/** The edge domains of FANFARE_EDGE_DOMAINS (comma-separated), and what is wrong with the list. */
export function parseDomains(list: string | undefined): { domains: string[]; problems: string[] } {
  const domains = (list ?? '').split(',').map((d) => d.trim()).filter(Boolean)
  const problems = domains.filter((d) => !new RegExp(DOMAIN).test(d)).map((d) => `${JSON.stringify(d)} is not a JetStream domain (letters, digits, _ and -)`)
  if (new Set(domains).size !== domains.length) problems.push('a domain is listed twice')
  return { domains, problems }
}
