import { Elysia, t } from 'elysia'
import type { NatsConnection } from '@nats-io/transport-node'
import type { Db } from '../../../../core/db/client'
import { ErrorResponse } from '../../error-model'
import { Unavailable } from '../../errors'
import type { DeniedSubscription } from '../../../../core/nats-subscriptions'
import type { FeedStatus } from '../../realtime/change-feed'
import { checkReadiness, type Readiness } from './service'

/**
 * Liveness (/healthz: the process answers) and readiness (/readyz: its dependencies answer, NATS
 * lets it make every subscription it cannot serve without, and, on a node serving WebSockets,
 * every change feed follows its stream: a node whose subscribers would get no updates, or that
 * would miss other nodes' revocations, must not take traffic).
 */
export function healthModule(deps: {
  db: Db
  /** The read replica (DATABASE_READ_URL), when the node has one: every snapshot and REST read needs it. */
  readDb?: Db
  nc: NatsConnection
  eventStream: string
  feeds?: () => FeedStatus[]
  deniedSubscriptions?: () => DeniedSubscription[]
}) {
  // /readyz is open to anyone: calls that arrive while a check runs share it, so a flood costs
  // one Postgres query and one JetStream request at a time, not one each.
  let running: Promise<Readiness> | undefined
  const check = () =>
    (running ??= checkReadiness(deps.db, deps.nc, deps.eventStream, 2000, deps.readDb).finally(() => {
      running = undefined
    }))
  return new Elysia({ detail: { tags: ['health'] } })
    .get('/healthz', () => ({ status: 'ok' as const }), {
      response: { 200: t.Object({ status: t.Literal('ok') }) },
      detail: { summary: 'Liveness' },
    })
    .get(
      '/readyz',
      async () => {
        const r = await check()
        const feeds = deps.feeds?.() ?? []
        const changeFeeds = feeds.every((f) => f.following)
        // Non-essential ones (the consumer-deleted advisories) have a fallback: logged and counted only.
        const denied = (deps.deniedSubscriptions?.() ?? []).filter((d) => d.essential).map(({ subject, name, since }) => ({ subject, subscription: name, since }))
        if (!r.postgres || !r.nats || r.postgresRead === false || !changeFeeds || denied.length > 0) {
          const lagging = feeds.filter((f) => !f.following).map(({ stream, reason }) => ({ stream, reason }))
          const message =
            denied.length > 0
              ? `NATS denies this node subscribe on ${denied.map((d) => d.subject).join(', ')} (permissions narrowed while it runs): it would miss what other nodes send there (revocations, room changes, presence); an operator must grant the NATS user subscribe on it again`
              : 'a dependency is not reachable or a change feed is not following'
          throw new Unavailable(message, 'not_ready', {
            ...r,
            ...(deps.feeds ? { changeFeeds } : {}),
            ...(lagging.length > 0 ? { notFollowing: lagging } : {}),
            ...(denied.length > 0 ? { deniedSubscriptions: denied } : {}),
          })
        }
        return { status: 'ready' as const, ...r, ...(deps.feeds ? { changeFeeds } : {}) }
      },
      {
        response: {
          200: t.Object({
            status: t.Literal('ready'),
            postgres: t.Boolean(),
            nats: t.Boolean(),
            postgresRead: t.Optional(t.Boolean({ description: 'on a node with DATABASE_READ_URL: the read replica answers (it serves every snapshot and REST read)' })),
            changeFeeds: t.Optional(t.Boolean({ description: 'on a node serving WebSockets: every change feed follows its stream' })),
          }),
          503: ErrorResponse,
        },
        detail: {
          summary: 'Readiness: Postgres and NATS/JetStream answer within 2 s, NATS grants every subscription the node needs, and every change feed follows its stream',
          description:
            '503 `not_ready` names what is wrong in `details`: `postgres`/`nats`/`postgresRead` false, `notFollowing` (change feeds), ' +
            '`deniedSubscriptions` ({ subject, subscription, since }: subscriptions NATS refused after a permissions reload; the message names the subjects).',
        },
      },
    )
}
