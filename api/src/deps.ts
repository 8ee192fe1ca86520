import type { AnyElysia } from 'elysia'
import type { NatsConnection } from '@nats-io/transport-node'
import type { Config } from '../../core/config'
import type { Db } from '../../core/db/client'
import type { Logger } from '../../core/logger'
import type { Metrics } from '../../core/metrics'
import type { SubscriptionWatch } from '../../core/nats-subscriptions'
import type { Ingest } from './modules/events/service'
import type { Security } from './auth/security'
import type { FeedStatus } from './realtime/change-feed'
import type { Presence } from './presence'
import type { Limits } from './limits'

/** What the API needs from the process that runs it. Nothing connects at import time. */
export type ApiDeps = {
  config: Config
  db: Db
  /**
   * Where channel snapshots and REST reads come from (DATABASE_READ_URL: a read replica, or at an
   * edge site one near it). Absent: `db`.
   */
  readDb?: Db
  nc: NatsConnection
  logger: Logger
  /** The process's metrics (GET /metrics); a registry of its own when absent. */
  metrics?: Metrics
  /** Who is calling and what they may do (see startSecurity). */
  security: Security
  /**
   * The node's core NATS subscriptions (revocations, rooms, presence, ...): one that NATS denies
   * (permissions narrowed while the node runs) makes readiness false. Absent: not checked.
   */
  subscriptions?: SubscriptionWatch
  /** An ingest service to share with other layers; created from config/nc/logger when absent. */
  ingest?: Ingest
  /** Rate, connection and origin limits, shared by REST and WebSocket; created from config when absent. */
  limits?: Limits
  /** The WebSocket layer (api/src/realtime/), when this app serves it. */
  realtime?: {
    /** Its routes, built from the app's ingest service and limits so REST and WebSocket share them (one budget per user or key). */
    routes: (ctx: { ingest: Ingest; limits: Limits }) => AnyElysia
    /** Its change feeds' state, part of readiness. */
    feeds: () => FeedStatus[]
    /** Who is in tracked channels (GET /v1/presence). */
    presence: Presence
  }
}
