import { metricsHost, type Config } from './config'
import type { Logger } from './logger'
import { createMetrics, serveMetrics, type Metrics } from './metrics'
import { startTracing } from './tracing'

export type Observability = {
  metrics: Metrics
  /** The port of the unauthenticated metrics listener (FANFARE_METRICS_PORT), when there is one. */
  metricsPort?: number
  /** Exports the spans still buffered and stops the metrics listener. */
  stop: () => Promise<void>
}

/**
 * What `main` starts first: the process's metrics (served on FANFARE_METRICS_PORT when set) and
 * tracing (only when an OTLP endpoint is set; see startTracing).
 */
export function startObservability(config: Config, serviceName: string, logger: Logger): Observability {
  const metrics = createMetrics()
  const listener = config.FANFARE_METRICS_PORT === undefined ? undefined : serveMetrics({ metrics, port: config.FANFARE_METRICS_PORT, hostname: metricsHost(config) })
  if (listener) logger.info({ host: metricsHost(config), port: listener.port }, 'metrics listening (GET /metrics, no auth)')
  const tracing = startTracing(config, config.OTEL_SERVICE_NAME ?? serviceName)
  if (tracing) logger.info({ sampler: config.OTEL_TRACES_SAMPLER, protocol: config.OTEL_EXPORTER_OTLP_PROTOCOL }, 'tracing exported over OTLP/HTTP')
  return {
    metrics,
    metricsPort: listener?.port,
    stop: async () => {
      await listener?.stop()
      await tracing?.stop()
    },
  }
}
