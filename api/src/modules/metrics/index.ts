import { Elysia, t } from 'elysia'
import type { Metrics } from '../../../../core/metrics'
import type { AuthPlugin } from '../../auth/plugin'
import { ErrorResponse } from '../../error-model'

/**
 * GET /metrics: this process's metrics in Prometheus' text format, for an admin:read credential.
 * A scraper on a private network can use FANFARE_METRICS_PORT instead (no credential).
 */
export function metricsModule(deps: { auth: AuthPlugin; metrics: Metrics }) {
  return new Elysia({ detail: { tags: ['admin'] } }).use(deps.auth).get(
    '/metrics',
    async ({ set }) => {
      set.headers['content-type'] = deps.metrics.contentType
      return deps.metrics.text()
    },
    {
      auth: 'admin:read',
      response: { 200: t.String({ description: 'Prometheus text exposition format' }), 401: ErrorResponse, 403: ErrorResponse },
      detail: {
        summary: 'Prometheus metrics',
        description:
          "This process's metrics (README, Metrics) in Prometheus' text format. Needs an API key with admin:read (or the admin token); " +
          'Prometheus sends it with `authorization: { credentials: ... }`. FANFARE_METRICS_PORT serves the same without a credential on a port of its own.',
      },
    },
  )
}
