import { metricsHost, type Config } from './config'
import { StartFailure } from './start-failure'

// Listening on HOST and a port at start: the check made before anything starts, and the error that
// names the setting to change, for the API's PORT and every process's FANFARE_METRICS_PORT.

/** ListenFailed's cause when a node is given one port for two listeners (PORT and FANFARE_METRICS_PORT). */
const SAME_PORT = 'FANFARE_SAME_PORT'

/**
 * Thrown at start when a process cannot listen on HOST and a port (`setting`: PORT, the API's;
 * FANFARE_METRICS_PORT): Bun's own error ("Is port 3000 in use?") names neither the setting nor
 * what to do.
 */
export class ListenFailed extends StartFailure {
  constructor(host: string, port: number, setting: 'PORT' | 'FANFARE_METRICS_PORT', cause: unknown) {
    const code = (cause as { code?: string } | undefined)?.code
    // The metrics listener's address is FANFARE_METRICS_HOST (HOST when unset).
    const hostSetting = setting === 'PORT' ? 'HOST' : 'FANFARE_METRICS_HOST'
    // An IPv6 address in brackets, as in a URL: `::1:9464` reads as another address.
    const at = `${host.includes(':') ? `[${host}]` : host}:${port}`
    super(
      code === SAME_PORT
        ? `cannot listen on ${at} twice: FANFARE_METRICS_PORT is the same port as PORT; set FANFARE_METRICS_PORT to another port`
        : code === 'EADDRINUSE'
        ? `cannot listen on ${at}: the port is in use by another process (another Fanfare?): stop it, or set ${setting} to a free port`
        : code === 'EADDRNOTAVAIL'
          ? `cannot listen on ${at}: ${host} is not an address of this machine: set ${hostSetting} to one of its addresses (0.0.0.0 for all)`
          : `cannot listen on ${at} (${hostSetting}, ${setting}): ${(cause as Error)?.message ?? String(cause)}`,
      { cause },
    )
    this.name = 'ListenFailed'
  }
}

/**
 * Throws ListenFailed when HOST and a port (`setting`: PORT, FANFARE_METRICS_PORT) cannot be
 * listened on now (taken, or not an address of this machine), by binding it as the listener will
 * and letting go at once. For a start that does costly or lasting work before it listens (npm start
 * opens the database and starts nats-server, an API node connects to Postgres and NATS): it can
 * refuse before any of that. Port 0 (any free port) always passes.
 */
export async function checkPort(host: string, port: number, setting: 'PORT' | 'FANFARE_METRICS_PORT' = 'PORT'): Promise<void> {
  if (port === 0) return
  let probe: ReturnType<typeof Bun.serve>
  try {
    probe = Bun.serve({ hostname: host, port, reusePort: false, fetch: () => new Response() })
  } catch (err) {
    throw new ListenFailed(host, port, setting, err)
  }
  await probe.stop(true)
}

/**
 * The API node's ports checked before anything starts (checkPort): PORT on HOST, and
 * FANFARE_METRICS_PORT on FANFARE_METRICS_HOST (else HOST) when set. One port given to both passes
 * each check alone, then failed at the second listen with "in use by another process" (the node's
 * own metrics listener): refused here, saying so, whatever the two hosts (one of them on every
 * address, 0.0.0.0, takes the port on the other too).
 */
export async function checkPorts(config: Pick<Config, 'HOST' | 'PORT' | 'FANFARE_METRICS_PORT' | 'FANFARE_METRICS_HOST'>): Promise<void> {
  const metrics = config.FANFARE_METRICS_PORT
  if (metrics !== undefined && metrics !== 0 && metrics === config.PORT) {
    throw new ListenFailed(metricsHost(config), metrics, 'FANFARE_METRICS_PORT', Object.assign(new Error('the same port as PORT'), { code: SAME_PORT }))
  }
  await checkPort(config.HOST, config.PORT)
  if (metrics !== undefined) await checkPort(metricsHost(config), metrics, 'FANFARE_METRICS_PORT')
}
