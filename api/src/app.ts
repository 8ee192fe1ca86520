import { Elysia, type AnyElysia } from 'elysia'
import { topology } from '../../core/nats'
import { jsonBody } from './body'
import type { ApiDeps } from './deps'
import { ErrorResponse } from './error-model'
import { errorHandler } from './errors'
import { routeContracts } from './route-contracts'
import { adminModule } from './modules/admin'
import { auditModule } from './modules/audit'
import { createAudit } from './modules/audit/service'
import { eventsModule } from './modules/events'
import { createIngest } from './modules/events/service'
import { healthModule } from './modules/health'
import { metricsModule } from './modules/metrics'
import { createMetrics } from '../../core/metrics'
import { presenceModule } from './modules/presence'
import { keysModule } from './modules/keys'
import { revocationsModule } from './modules/revocations'
import { authPlugin } from './auth/plugin'
import { leaderboardsModule } from './modules/leaderboards'
import { roomsModule } from './modules/rooms'
import { pollsModule } from './modules/polls'
import { streamsModule } from './modules/streams'
import { matchesModule } from './modules/matches'
import { reactionsModule } from './modules/reactions'
import { demoModule } from './modules/demo'
import { docsModule } from './modules/docs'
import { consoleModule } from './modules/console'
import { createLimits } from './limits'
import { originsPlugin } from './limits/origins'
import { nameRequestSpan, serveTraced } from '../../core/tracing'

/**
 * Builds the API: every route, error mapping, body limit and OpenAPI document (/docs, JSON at
 * /docs/json). Does not listen; see `startApi`. When `deps.realtime` is given it is mounted too.
 */
export function createApp(deps: ApiDeps) {
  const { config, db, nc, logger } = deps
  const readDb = deps.readDb ?? db
  const metrics = deps.metrics ?? createMetrics()
  const ingest = deps.ingest ?? createIngest({ config, nc, logger, metrics, rooms: deps.security.rooms })
  const { eventStream } = topology(config)
  const limits = deps.limits ?? createLimits({ config, metrics })
  // One instance for every module: Elysia de-duplicates it by name and seed.
  const auth = authPlugin({ authenticator: deps.security.authenticator, config, limits })
  const audit = createAudit({ db, logger })
  const { keys, revocations } = deps.security
  const app = new Elysia({
    // Unknown fields are refused (422 naming them), not dropped: Elysia's default normalisation
    // strips them silently, so `PUT /admin/leaderboards/x { "resets": "daily" }` (a misspelt rule) would answer 200
    // and set nothing. Bodies and queries are then checked as declared (additionalProperties:
    // false). Responses are narrowed to their schemas by routeContracts, as normalisation did.
    normalize: false,
    // WebSocket limits are server-wide in Bun: per-route options are ignored.
    websocket: {
      // The realtime layer closes a socket queued past FANFARE_WS_BACKPRESSURE_BYTES with 4008
      // (startRealtime). Bun's own limit is a backstop at twice that: past it Bun would silently
      // drop messages, so it must close instead (without a close frame: the client sees 1006).
      backpressureLimit: config.FANFARE_WS_BACKPRESSURE_BYTES * 2,
      closeOnBackpressureLimit: true,
      maxPayloadLength: config.FANFARE_MAX_BODY_BYTES,
      // A client gone without a close (no FIN: a lost signal, a laptop lid) is found by the
      // realtime layer's own sweep (createLiveness), which pings quiet sockets and closes those not
      // heard from within FANFARE_WS_IDLE_TIMEOUT_S: Bun's timeout restarts at every frame it
      // sends, so it never finds one on a busy channel. Bun's pings are off (the sweep pings). Its
      // timeout stays, at twice ours, as a backstop that a pinged client never reaches (Bun's
      // timers tick every 4 s: at ours, it cut quiet healthy clients before their first ping); it
      // also bounds how long a closed socket waits for a peer that is gone (a few seconds).
      idleTimeout: Math.min(960, 2 * config.FANFARE_WS_IDLE_TIMEOUT_S),
      sendPings: false,
    },
    serve: {
      // A second server on the same port must fail, not silently share traffic.
      reusePort: false,
      // Bun's own limit is off: it answers a declared length past it with a bare 413 (no JSON
      // body) before any of our code runs. Ours does the job: jsonBody answers a JSON 413 to a
      // declared Content-Length over the limit before reading anything, and stops reading a
      // streamed body as soon as it passes the limit; a body no route reads is never buffered.
      maxRequestBodySize: Number.MAX_SAFE_INTEGER,
    },
  })
    // Each request in a SERVER span when tracing is on (named by its route once routed).
    .wrap((handle) => (request: Request) => serveTraced(request, handle as unknown as (r: Request) => Response))
    .onTransform({ as: 'global' }, ({ request, route }) => nameRequestSpan(request, route))
    .use(errorHandler(logger.child({ component: 'http' })))
    // First: a request from an origin that is not allowed gets 403 before anything runs.
    .use(originsPlugin(limits.origins))
    // Routes without a query schema take no query; answers keep to their response schemas.
    .use(routeContracts((): AnyElysia => app))
    .use(jsonBody(config.FANFARE_MAX_BODY_BYTES))
    .use(docsModule())
    // What any route may answer besides its own statuses, in the OpenAPI document too: 400 for a
    // malformed percent-escape in the URL and 422 for an unknown query parameter (routeContracts);
    // 403 `origin_not_allowed` for a browser's request from an origin FANFARE_ALLOWED_ORIGINS does
    // not list (originsPlugin, before anything else); 429 wherever a token or key is charged (the auth plugin);
    // 503 `database_unavailable` wherever Postgres is read, which includes looking up a key.
    .guard({ schema: 'standalone', response: { 400: ErrorResponse, 403: ErrorResponse, 422: ErrorResponse } }, (all) =>
      all
        .use(healthModule({ db, readDb: deps.readDb, nc, eventStream, feeds: deps.realtime?.feeds, deniedSubscriptions: deps.subscriptions?.denied, graceMs: config.FANFARE_READY_GRACE_S * 1000 }))
        .guard({ schema: 'standalone', response: { 429: ErrorResponse, 503: ErrorResponse } }, (charged) =>
          charged
            .use(metricsModule({ auth, metrics }))
            .use(eventsModule(auth, ingest))
            .use(leaderboardsModule({ db: readDb, auth }))
            .use(roomsModule({ db: readDb, auth, rooms: deps.security.rooms }))
            .use(streamsModule({ db: readDb, auth }))
            .use(pollsModule({ db: readDb, auth }))
            .use(matchesModule({ db: readDb, auth }))
            .use(reactionsModule({ db: readDb, auth }))
            .use(adminModule({ config, db, nc, ingest, auth, rooms: deps.security.rooms, audit }))
            .use(keysModule({ auth, keys, revocations, audit }))
            .use(revocationsModule({ auth, revocations, audit }))
            .use(auditModule({ auth, audit })),
        ),
    )
    .use(demoModule({ config, db, ingest }))
    .use(consoleModule())
  if (!deps.realtime) return app
  return app
    .guard({ schema: 'standalone', response: { 400: ErrorResponse, 403: ErrorResponse, 422: ErrorResponse, 429: ErrorResponse, 503: ErrorResponse } }, (charged) =>
      charged.use(presenceModule({ auth, presence: deps.realtime!.presence, rooms: deps.security.rooms })),
    )
    .use(deps.realtime.routes({ ingest, limits }))
}

export type App = ReturnType<typeof createApp>
