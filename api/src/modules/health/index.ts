import { Elysia, t } from 'elysia'
import type { NatsConnection } from '@nats-io/transport-node'
import type { Db } from '../../../../core/db/client'
import { ErrorResponse } from '../../error-model'
import { Unavailable } from '../../errors'
import type { FeedStatus } from '../../realtime/change-feed'
import { checkReadiness, type Readiness } from './service'

/**
 * Liveness (/healthz: the process answers) and readiness (/readyz: its dependencies answer and,
 * on a node serving WebSockets, every change feed follows its stream: a node whose subscribers
 * would get no updates must not take traffic).
 */
export function healthModule(deps: { db: Db; nc: NatsConnection; eventStream: string; feeds?: () => FeedStatus[] }) {
  // /readyz is open to anyone: calls that arrive while a check runs share it, so a flood costs
  // one Postgres query and one JetStream request at a time, not one each.
  let running: Promise<Readiness> | undefined
  const check = () =>
    (running ??= checkReadiness(deps.db, deps.nc, deps.eventStream).finally(() => {
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
        if (!r.postgres || !r.nats || !changeFeeds) {
          const lagging = feeds.filter((f) => !f.following).map(({ stream, reason }) => ({ stream, reason }))
          throw new Unavailable('a dependency is not reachable or a change feed is not following', 'not_ready', {
            ...r,
            ...(deps.feeds ? { changeFeeds } : {}),
            ...(lagging.length > 0 ? { notFollowing: lagging } : {}),
          })
        }
        return { status: 'ready' as const, ...r, ...(deps.feeds ? { changeFeeds } : {}) }
      },
      {
        response: {
          200: t.Object({ status: t.Literal('ready'), postgres: t.Boolean(), nats: t.Boolean(), changeFeeds: t.Optional(t.Boolean({ description: 'on a node serving WebSockets: every change feed follows its stream' })) }),
          503: ErrorResponse,
        },
        detail: { summary: 'Readiness: Postgres and NATS/JetStream answer within 2 s, and every change feed follows its stream' },
      },
    )
}
