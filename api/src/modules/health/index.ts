import { Elysia, t } from 'elysia'
import type { NatsConnection } from '@nats-io/transport-node'
import type { Db } from '../../../../core/db/client'
import { ErrorResponse } from '../../error-model'
import { Unavailable } from '../../errors'
import type { DeniedSubscription } from '../../../../core/nats-subscriptions'
import type { FeedStatus } from '../../realtime/change-feed'
import { checkReadiness, createReadiness, type Checked } from './service'

/**
 * Liveness (/healthz: the process answers) and readiness (/readyz: its dependencies answer, NATS
 * lets it make every subscription it cannot serve without, and, on a node serving WebSockets,
 * every change feed follows its stream: a node whose subscribers would get no updates, or that
 * would miss other nodes' revocations, must not take traffic). A JetStream outage, which every
 * node sees alike (a NATS cluster electing a stream leader), is tolerated for `graceMs`: see
 * `createReadiness`.
 */
export function healthModule(deps: {
  db: Db
  /** The read replica (DATABASE_READ_URL), when the node has one: every snapshot and REST read needs it. */
  readDb?: Db
  nc: NatsConnection
  eventStream: string
  feeds?: () => FeedStatus[]
  deniedSubscriptions?: () => DeniedSubscription[]
  /** FANFARE_READY_GRACE_S in ms. */
  graceMs: number
}) {
  // /readyz is open to anyone: calls that arrive while a check runs share it, so a flood costs
  // one Postgres query and one JetStream request at a time, not one each.
  let running: Promise<Checked> | undefined
  const check = () =>
    (running ??= checkReadiness(deps.db, deps.nc, deps.eventStream, 2000, deps.readDb).finally(() => {
      running = undefined
    }))
  const judge = createReadiness({ graceMs: deps.graceMs, reconnectGraceMs: RECONNECT_GRACE_MS })
  return new Elysia({ detail: { tags: ['health'] } })
    .get('/healthz', () => ({ status: 'ok' as const }), {
      response: { 200: t.Object({ status: t.Literal('ok') }) },
      detail: { summary: 'Liveness' },
    })
    .get(
      '/readyz',
      async () => {
        const checked = await check()
        // Non-essential ones (the consumer-deleted advisories) have a fallback: logged and counted only.
        const denied = (deps.deniedSubscriptions?.() ?? []).filter((d) => d.essential)
        const v = judge(checked, deps.feeds?.(), denied)
        if (v.status === 'not_ready') throw new Unavailable(v.message, 'not_ready', v.details)
        return v.body as ReadyBody
      },
      {
        response: { 200: ReadyBody, 503: ErrorResponse },
        detail: {
          summary:
            'Readiness: Postgres and NATS/JetStream answer within 2 s, NATS grants every subscription the node needs, and every change feed follows its stream; a JetStream outage is tolerated for FANFARE_READY_GRACE_S (200 `degraded`)',
          description:
            '200 `ready`; 200 `degraded` while JetStream (the event stream\'s info, a change feed) has not answered for less than FANFARE_READY_GRACE_S, or the NATS connection is reconnecting ' +
            `(for less than ${RECONNECT_GRACE_MS / 1000} s): \`degraded\` says since when, what, and when the node turns not ready (\`notReadyAt\`). Every node sees a NATS cluster's election alike: ` +
            'a balancer should keep a degraded node. 503 `not_ready` names what is wrong in `details`: `postgres`/`nats`/`jetstream`/`postgresRead` false, `notFollowing` (change feeds), ' +
            '`degradedSince` (an outage past the grace), `deniedSubscriptions` ({ subject, subscription, since }: subscriptions NATS refused after a permissions reload; the message names the subjects).',
        },
      },
    )
}

/** How long a reconnecting connection leaves the node ready: moving to another server of a cluster takes under a second. */
export const RECONNECT_GRACE_MS = 3000

const ReadyBody = t.Object({
  status: t.Union([t.Literal('ready'), t.Literal('degraded')], {
    description: '`degraded`: a JetStream outage (or a reconnect) within its grace; the node serves REST reads and WebSockets, live updates and writes wait for JetStream',
  }),
  postgres: t.Boolean(),
  nats: t.Boolean({ description: "this node's NATS connection answers a round trip" }),
  jetstream: t.Boolean({ description: "JetStream answers the event stream's info" }),
  postgresRead: t.Optional(t.Boolean({ description: 'on a node with DATABASE_READ_URL: the read replica answers (it serves every snapshot and REST read)' })),
  changeFeeds: t.Optional(t.Boolean({ description: 'on a node serving WebSockets: every change feed follows its stream' })),
  notFollowing: t.Optional(t.Array(t.Object({ stream: t.String(), reason: t.Optional(t.String()), since: t.Optional(t.String({ description: 'ISO time' })) }))),
  degraded: t.Optional(
    t.Object({
      since: t.String({ description: 'ISO time: since when something has not answered' }),
      notReadyAt: t.String({ description: 'ISO time: when the node answers 503 `not_ready` if it still does not' }),
      notAnswering: t.Array(t.String(), { description: 'what is not answering, for people' }),
    }),
  ),
})
type ReadyBody = typeof ReadyBody.static
