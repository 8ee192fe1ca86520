import { Elysia, t } from 'elysia'
import type { NatsConnection } from '@nats-io/transport-node'
import type { Db } from '../../../../core/db/client'
import { ErrorResponse } from '../../error-model'
import { Unavailable } from '../../errors'
import { checkReadiness } from './service'

/** Liveness (/healthz: the process answers) and readiness (/readyz: its dependencies answer). */
export function healthModule(db: Db, nc: NatsConnection, eventStream: string) {
  return new Elysia({ detail: { tags: ['health'] } })
    .get('/healthz', () => ({ status: 'ok' as const }), {
      response: { 200: t.Object({ status: t.Literal('ok') }) },
      detail: { summary: 'Liveness' },
    })
    .get(
      '/readyz',
      async () => {
        const r = await checkReadiness(db, nc, eventStream)
        if (!r.postgres || !r.nats) throw new Unavailable('a dependency is not reachable', 'not_ready', r)
        return { status: 'ready' as const, ...r }
      },
      {
        response: { 200: t.Object({ status: t.Literal('ready'), postgres: t.Boolean(), nats: t.Boolean() }), 503: ErrorResponse },
        detail: { summary: 'Readiness: Postgres and NATS/JetStream answer within 2 s' },
      },
    )
}
