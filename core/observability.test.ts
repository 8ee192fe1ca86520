import { afterEach, expect, test } from 'bun:test'
import { loadConfig } from './config'
import { createLogger } from './logger'
import { startObservability, type Observability } from './observability'

const started: Observability[] = []
afterEach(async () => {
  for (const o of started.splice(0)) await o.stop()
})

/** Whether GET /metrics answers at host:port (false: nothing listens there). */
const answers = (host: string, port: number) =>
  fetch(`http://${host}:${port}/metrics`).then(
    (r) => r.status === 200,
    () => false,
  )

test('the metrics listener binds FANFARE_METRICS_HOST when set, and HOST when not', async () => {
  // Two loopback addresses (Linux answers on all of 127.0.0.0/8): the API's HOST and another.
  const start = (vars: Record<string, string>) => {
    const o = startObservability(loadConfig({ HOST: '127.0.0.1', FANFARE_METRICS_PORT: '0', ...vars }), 'test', createLogger('silent'))
    started.push(o)
    return o.metricsPort!
  }
  const apart = start({ FANFARE_METRICS_HOST: '127.0.0.2' })
  expect([await answers('127.0.0.2', apart), await answers('127.0.0.1', apart)]).toEqual([true, false])
  const same = start({})
  expect([await answers('127.0.0.1', same), await answers('127.0.0.2', same)]).toEqual([true, false])
})
