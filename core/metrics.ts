import { Counter, Gauge, Histogram, Registry } from 'prom-client'
import { ListenFailed } from './listen'

/**
 * The Prometheus metrics of one process (API node, stream workers, or both in all-in-one), made
 * once in `main` and passed to whatever counts. Labels only ever take values from bounded sets
 * (event types, frame ops, close codes, channel kinds, projection names, partition numbers): never
 * a channel, user or key. Gauges that describe state (connections, channels, lag) are read when
 * scraped, from the sources given to `watch*`, so the hot paths only bump counters.
 */
export type Metrics = ReturnType<typeof createMetrics>

/** Latency buckets in seconds: 1 ms to 10 s. */
const LATENCY = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

/** Frame ops the WebSocket layer sends (see ServerFrame); anything else counts as `other`. */
export const FRAME_OPS = ['update', 'snapshot', 'subscribed', 'unsubscribed', 'ack', 'authed', 'error', 'pong', 'token_expiring', 'warning', 'other'] as const
export type FrameOp = (typeof FRAME_OPS)[number]

/** What a limit refused (fanfare_rate_limited_total's `what`). */
export type RateLimitedWhat = 'rest' | 'ws_publish' | 'ws_subscribe' | 'auth' | 'ws_connections' | 'ws_channels'
/**
 * Whose limit refused it (`caller`): a user's, a key's, anonymous callers' at an address (their
 * budget), or one of an address whoever calls from it (connects, open sockets, failed credentials).
 */
export type RateLimitedCaller = 'user' | 'key' | 'anonymous' | 'address'

/**
 * The op of a server frame's text, without parsing or allocating: every frame is written as
 * `{"op":"<op>",...}` (JSON.stringify keeps the literal's key order), so two characters tell.
 */
export function opOf(text: string): FrameOp {
  if (!text.startsWith('{"op":"')) return 'other'
  const a = text.charCodeAt(7)
  const b = text.charCodeAt(8)
  switch (a) {
    case 117 /* u */:
      return b === 112 /* p */ ? 'update' : 'unsubscribed'
    case 115 /* s */:
      return b === 110 /* n */ ? 'snapshot' : 'subscribed'
    case 97 /* a */:
      return b === 99 /* c */ ? 'ack' : 'authed'
    case 101 /* e */:
      return 'error'
    case 112 /* p */:
      return 'pong'
    case 116 /* t */:
      return 'token_expiring'
    case 119 /* w */:
      return 'warning'
    default:
      return 'other'
  }
}

/** Close codes counted under their own label; any other code counts as `other`. */
const KNOWN_CLOSE_CODES = new Set([1000, 1001, 1005, 1006, 1008, 1009, 1011, 1013, 4001, 4003, 4008, 4012, 4029])

/** How WebSocket state is read at scrape time. */
export type RealtimeSources = { connections: () => number; subscriptions: () => number; channels: () => number }

/** Creates a process's registry and every Fanfare metric in it. */
export function createMetrics() {
  const registry = new Registry()
  const registers = [registry]

  let realtime: RealtimeSources | undefined
  let presenceUsers: (() => number) | undefined
  let deniedSubscriptions: (() => { name: string }[]) | undefined
  // Every name ever denied keeps a series (0 once granted again), so an alert on it can resolve.
  const deniedNames = new Set<string>()
  new Gauge({
    name: 'fanfare_ws_connections',
    help: 'WebSocket connections open on this node',
    registers,
    collect() {
      this.set(realtime?.connections() ?? 0)
    },
  })
  new Gauge({
    name: 'fanfare_ws_subscriptions',
    help: 'Channel subscriptions of the WebSockets of this node',
    registers,
    collect() {
      this.set(realtime?.subscriptions() ?? 0)
    },
  })
  new Gauge({
    name: 'fanfare_channels',
    help: 'Channels with at least one subscriber on this node',
    registers,
    collect() {
      this.set(realtime?.channels() ?? 0)
    },
  })
  new Gauge({
    name: 'fanfare_presence_users',
    help: 'Users present in tracked channels, cluster-wide as this node sees it (each user once per channel)',
    registers,
    collect() {
      this.set(presenceUsers?.() ?? 0)
    },
  })

  new Gauge({
    name: 'fanfare_nats_subscriptions_denied',
    help: 'Core NATS subscriptions this process needs and NATS refuses its user now (permissions narrowed by a config reload), by what they are for: revocations, rooms, presence, presence_want, limits, limits_want, node_stats, consumer_deleted, replays',
    labelNames: ['subscription'],
    registers,
    collect() {
      const counts = new Map<string, number>()
      for (const d of deniedSubscriptions?.() ?? []) counts.set(d.name, (counts.get(d.name) ?? 0) + 1)
      for (const name of counts.keys()) deniedNames.add(name)
      for (const name of deniedNames) this.labels(name).set(counts.get(name) ?? 0)
    },
  })

  const publishesDenied = new Counter({
    name: 'fanfare_nats_publishes_denied_total',
    help: 'Publishes NATS dropped because it denies this process\'s user the subject (permissions narrowed by a config reload), by area: ev, changes, control, presence, admin, other',
    labelNames: ['area'],
    registers,
  })

  // Frames sent are counted per publish (once per change on a busy node): added up in plain numbers
  // and handed to the counter when it is read, not through prom-client's labelled inc (which hashes
  // its labels on every call).
  const sentSince = Object.fromEntries(FRAME_OPS.map((op) => [op, 0])) as Record<FrameOp, number>
  new Counter({
    name: 'fanfare_ws_messages_sent_total',
    help: 'WebSocket frames sent, by op (a published frame counts once per recipient)',
    labelNames: ['op'],
    registers,
    collect() {
      for (const op of FRAME_OPS) {
        if (sentSince[op] === 0) continue
        this.labels(op).inc(sentSince[op])
        sentSince[op] = 0
      }
    },
  })
  const disconnects = new Counter({ name: 'fanfare_ws_disconnects_total', help: 'WebSocket connections closed, by close code', labelNames: ['code'], registers })
  const disconnectsBy = new Map<number, Counter.Internal>()

  const ingested = new Counter({ name: 'fanfare_events_ingested_total', help: 'Events stored in JetStream by this node, by type and by how they came (http, ws, internal)', labelNames: ['type', 'via'], registers })
  const ingestedBy = { http: new Map<string, Counter.Internal>(), ws: new Map<string, Counter.Internal>(), internal: new Map<string, Counter.Internal>() }
  const ingestDuration = new Histogram({ name: 'fanfare_ingest_duration_seconds', help: 'Time from a validated publish request to JetStream acknowledging all its events', buckets: LATENCY, registers })
  const refused = new Counter({
    name: 'fanfare_events_refused_total',
    help: 'Events of publish requests answered 503 (not stored, or not confirmed), by the error code clients got: unavailable, storage_full, publish_denied, overloaded, database_unavailable (the visibility of a chat room could not be read)',
    labelNames: ['code'],
    registers,
  })
  const rateLimited = new Counter({
    name: 'fanfare_rate_limited_total',
    help: 'Requests, WebSocket commands and connections refused by a rate or count limit, by what was refused and whose limit refused it (user, key, anonymous: an address of anonymous callers, address: any caller at an address)',
    labelNames: ['what', 'caller'],
    registers,
  })

  // Observed once per change pushed: counted in plain arrays (see countingHistogram).
  const commitToPush = countingHistogram(registry, { name: 'fanfare_commit_to_push_seconds', help: 'Time from a change committing in Postgres to its frame being sent to subscribers, by channel kind', label: 'kind', buckets: LATENCY })
  const eventToPush = countingHistogram(registry, { name: 'fanfare_event_to_push_seconds', help: 'Time from an event being stored in JetStream to the frame showing its change being sent (the oldest event of the batch that made the change), by channel kind', label: 'kind', buckets: LATENCY })

  const lag = new Gauge({ name: 'fanfare_projection_lag_events', help: 'Events stored and not yet applied, per projection and partition this worker holds, as of its last delivery (each carries what is stored behind it; events stored since are counted once delivered); while a batch is retried, plus those stored since the stall began (the batch had taken 1 s, or first failed); while its consumer reopens, likewise. Never asked of the consumer (a consumer info slows nats-server before 2.9.15)', labelNames: ['projection', 'partition'], registers })
  const oldestUnapplied = new Gauge({
    name: 'fanfare_projection_oldest_unapplied_age_seconds',
    help: 'Age of the oldest stored event not yet applied, per projection and partition (0: none), sampled while FANFARE_EVENT_RETENTION_MS is set: alert well before it reaches the retention, past which JetStream deletes events unapplied',
    labelNames: ['projection', 'partition'],
    registers,
  })
  const expiredUnapplied = new Counter({
    name: 'fanfare_projection_expired_unapplied_total',
    help: 'Ranges of events that retention (FANFARE_EVENT_RETENTION_MS) deleted before they were applied, found by a runner, per projection (each holds at least one event: they are lost to the read model)',
    labelNames: ['projection'],
    registers,
  })
  const batchDuration = new Histogram({ name: 'fanfare_batch_duration_seconds', help: 'Time to apply one batch (reads, the one statement, retries), by projection', labelNames: ['projection'], buckets: LATENCY, registers })
  const batchEvents = new Histogram({ name: 'fanfare_batch_events', help: 'Messages per applied batch', buckets: [1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000], registers })
  const batchTimeouts = new Counter({
    name: 'fanfare_batch_timeouts_total',
    help: 'Batch statements Postgres canceled for statement_timeout (57014), by projection: retried, split down to one event; a steady rate means a partition is stalled',
    labelNames: ['projection'],
    registers,
  })
  const deadLetters = new Counter({ name: 'fanfare_dead_letters_total', help: 'Stream messages written to dead letters, by projection', labelNames: ['projection'], registers })
  const consumerSkips = new Counter({
    name: 'fanfare_consumer_skips_total',
    help: "Batches whose consumer had skipped stored events (its state past events it never delivered), by projection and partition: the consumer is made again from the checkpoint and nothing is lost; any count is NATS misbehaving",
    labelNames: ['projection', 'partition'],
    registers,
  })

  return {
    registry,
    /** The metrics in Prometheus' text format. */
    text: () => registry.metrics(),
    contentType: registry.contentType,
    ws: {
      /** Reads connection, subscription and channel counts at scrape time. */
      watch: (sources: RealtimeSources) => void (realtime = sources),
      /** `recipients` frames of one text went out (one direct send, or a publish to a topic). */
      sent: (text: string, recipients = 1) => {
        if (recipients > 0) sentSince[opOf(text)] += recipients
      },
      /** `count` frames of a known op went out. */
      sentOp: (op: FrameOp, count: number) => {
        if (count > 0) sentSince[op] += count
      },
      disconnected: (code: number) => {
        const key = KNOWN_CLOSE_CODES.has(code) ? code : 0
        let c = disconnectsBy.get(key)
        if (!c) disconnectsBy.set(key, (c = disconnects.labels(key === 0 ? 'other' : String(key))))
        c.inc()
      },
    },
    presence: { watch: (users: () => number) => void (presenceUsers = users) },
    /** Reads the denied subscriptions (see SubscriptionWatch) at scrape time. */
    nats: {
      watchDenied: (denied: () => { name: string }[]) => void (deniedSubscriptions = denied),
      /** A publish NATS denied, by area (see publishAreaOf). */
      publishDenied: (area: string) => publishesDenied.labels(area).inc(),
    },
    ingest: {
      /** `count` events of `type` stored; `type` must be a known event type. */
      ingested: (type: string, via: 'http' | 'ws' | 'internal', count = 1) => {
        const byType = ingestedBy[via]
        let c = byType.get(type)
        if (!c) byType.set(type, (c = ingested.labels(type, via)))
        c.inc(count)
      },
      duration: ingestDuration,
      /** `count` events of a request answered 503 `code`. */
      refused: (code: string, count: number) => refused.labels(code).inc(count),
      rateLimited: (what: RateLimitedWhat, caller: RateLimitedCaller) => rateLimited.labels(what, caller).inc(),
    },
    push: {
      /** A change of a channel of `kind` committed at `committedAt` (events stored from `storedAt`) was pushed at `now` (all ms). */
      pushed: (kind: string, committedAt: number, storedAt: number | undefined, now: number) => {
        commitToPush.observe(kind, Math.max(0, now - committedAt) / 1000)
        if (storedAt !== undefined) eventToPush.observe(kind, Math.max(0, now - storedAt) / 1000)
      },
    },
    worker: {
      /** One applied batch. */
      batch: (projection: string, seconds: number, messages: number, deadLettered: number) => {
        batchDuration.labels(projection).observe(seconds)
        batchEvents.observe(messages)
        if (deadLettered > 0) deadLetters.labels(projection).inc(deadLettered)
      },
      /** Postgres canceled a batch statement of `projection` for statement_timeout. */
      timedOut: (projection: string) => batchTimeouts.labels(projection).inc(),
      /** A runner's consumer skipped stored events (see the runner's consumeFrom): made again from the checkpoint. */
      skipped: (projection: string, partition: number) => consumerSkips.labels(projection, String(partition)).inc(),
      /** A runner found events of `projection` that retention deleted before they were applied. */
      expiredUnapplied: (projection: string) => expiredUnapplied.labels(projection).inc(),
      /** Age in seconds of the oldest stored unapplied event of a projection's partition (0: none). */
      oldestUnapplied: (projection: string, partition: number, seconds: number) => oldestUnapplied.labels(projection, String(partition)).set(seconds),
      /** The lag gauge of one projection's partition; `remove` when the partition is let go. */
      lag: (projection: string, partition: number) => {
        const child = lag.labels(projection, String(partition))
        return { set: (events: number) => child.set(events), remove: () => lag.remove(projection, String(partition)) }
      },
    },
  }
}

/**
 * Serves `GET /metrics` without authentication on its own port, for a scraper on a private network
 * (FANFARE_METRICS_PORT). Returns the bound port and a stop function.
 */
export function serveMetrics(deps: { metrics: Metrics; port: number; hostname: string }): { port: number; stop: () => Promise<void> } {
  let server: ReturnType<typeof Bun.serve>
  try {
    server = Bun.serve({
      port: deps.port,
      hostname: deps.hostname,
      reusePort: false,
      fetch: async (req) => {
        const url = new URL(req.url)
        if (url.pathname !== '/metrics') return new Response('not found: GET /metrics', { status: 404 })
        if (req.method !== 'GET') return new Response('method not allowed', { status: 405 })
        return new Response(await deps.metrics.text(), { headers: { 'content-type': deps.metrics.contentType } })
      },
    })
  } catch (err) {
    throw new ListenFailed(deps.hostname, deps.port, 'FANFARE_METRICS_PORT', err)
  }
  return { port: server.port ?? deps.port, stop: () => server.stop(true) }
}


/** One series of a countingHistogram: observations per bucket (not cumulative; the last is +Inf only), their sum and count. */
type Series = { counts: Float64Array; sum: number; count: number; lastValue: number; lastBucket: number }

/**
 * A histogram with one label, registered in `registry` and exposed as prom-client's own are, for a
 * path that observes once per change pushed: an observation is a bucket search and three additions
 * on a series found by its label value. prom-client's labelled `observe` builds a closure and
 * hashes its labels on every call (~5% of an API node's CPU in a fan-out burst, bench/findings.md).
 */
function countingHistogram(registry: Registry, o: { name: string; help: string; label: string; buckets: number[] }) {
  let series = new Map<string, Series>()
  registry.registerMetric({
    name: o.name,
    help: o.help,
    type: 'histogram',
    aggregator: 'sum',
    get: () => {
      const values: { labels: Record<string, string | number>; value: number; metricName: string }[] = []
      for (const [label, s] of series) {
        let acc = 0
        o.buckets.forEach((le, i) => {
          acc += s.counts[i]
          values.push({ labels: { le, [o.label]: label }, value: acc, metricName: `${o.name}_bucket` })
        })
        values.push({ labels: { le: '+Inf', [o.label]: label }, value: s.count, metricName: `${o.name}_bucket` })
        values.push({ labels: { [o.label]: label }, value: s.sum, metricName: `${o.name}_sum` })
        values.push({ labels: { [o.label]: label }, value: s.count, metricName: `${o.name}_count` })
      }
      return { name: o.name, help: o.help, type: 'histogram', values, aggregator: 'sum' }
    },
    reset: () => void (series = new Map()),
  } as unknown as Parameters<Registry['registerMetric']>[0])
  return {
    /** Non-finite values (a run with an unreadable time) are not counted; prom-client's would throw mid-delivery. */
    observe: (label: string, value: number) => {
      if (!Number.isFinite(value)) return
      let s = series.get(label)
      if (!s) series.set(label, (s = { counts: new Float64Array(o.buckets.length + 1), sum: 0, count: 0, lastValue: Number.NaN, lastBucket: 0 }))
      // The changes of one batch reach a node together and carry one commit time: consecutive
      // observations are often the very same value (same millisecond), whose bucket is known.
      let i = s.lastBucket
      if (value !== s.lastValue) {
        i = 0
        while (i < o.buckets.length && value > o.buckets[i]) i++
        s.lastValue = value
        s.lastBucket = i
      }
      s.counts[i]++
      s.sum += value
      s.count++
    },
  }
}
