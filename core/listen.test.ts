import { afterAll, expect, test } from 'bun:test'
import { checkPort, checkPorts, ListenFailed } from './listen'

const taken: ReturnType<typeof Bun.serve>[] = []
afterAll(async () => {
  for (const server of taken) await server.stop(true)
})

/** A port on 127.0.0.1 that something else listens on. */
function takenPort(): number {
  const server = Bun.serve({ port: 0, hostname: '127.0.0.1', reusePort: false, fetch: () => new Response('not fanfare') })
  taken.push(server)
  return server.port!
}

/** A port free now: bound by the kernel's choice and let go. */
async function freePort(): Promise<number> {
  const server = Bun.serve({ port: 0, hostname: '127.0.0.1', reusePort: false, fetch: () => new Response() })
  const port = server.port!
  await server.stop(true)
  return port
}

test('a taken port is ListenFailed naming the setting to change', async () => {
  const port = takenPort()
  const failure = checkPort('127.0.0.1', port, 'FANFARE_METRICS_PORT')
  await expect(failure).rejects.toBeInstanceOf(ListenFailed)
  await expect(failure).rejects.toThrow(`cannot listen on 127.0.0.1:${port}: the port is in use by another process (another Fanfare?): stop it, or set FANFARE_METRICS_PORT to a free port`)
  await expect(checkPorts({ HOST: '127.0.0.1', PORT: port })).rejects.toThrow('set PORT to a free port')
})

test('a free port and port 0 pass, and stay free', async () => {
  const port = await freePort()
  await checkPort('127.0.0.1', port)
  await checkPort('127.0.0.1', 0)
  // Let go at once: the listener that follows the check can bind it.
  const server = Bun.serve({ port, hostname: '127.0.0.1', reusePort: false, fetch: () => new Response() })
  await server.stop(true)
})

test('one port for PORT and FANFARE_METRICS_PORT is refused, saying so; 0 for both is two free ports', async () => {
  const port = await freePort()
  await expect(checkPorts({ HOST: '127.0.0.1', PORT: port, FANFARE_METRICS_PORT: port })).rejects.toThrow(
    `cannot listen on 127.0.0.1:${port} twice: FANFARE_METRICS_PORT is the same port as PORT; set FANFARE_METRICS_PORT to another port`,
  )
  await checkPorts({ HOST: '127.0.0.1', PORT: 0, FANFARE_METRICS_PORT: 0 })
})

test('a HOST that is not an address of this machine says to set HOST', async () => {
  // 192.0.2.0/24 is TEST-NET-1: never assigned to a machine.
  await expect(checkPort('192.0.2.1', await freePort())).rejects.toThrow('192.0.2.1 is not an address of this machine: set HOST')
})

test('the metrics port is checked on FANFARE_METRICS_HOST when set: one that is not an address of this machine says to set FANFARE_METRICS_HOST', async () => {
  const port = await freePort()
  await expect(checkPorts({ HOST: '127.0.0.1', PORT: 0, FANFARE_METRICS_PORT: port, FANFARE_METRICS_HOST: '192.0.2.1' })).rejects.toThrow(
    `cannot listen on 192.0.2.1:${port}: 192.0.2.1 is not an address of this machine: set FANFARE_METRICS_HOST to one of its addresses`,
  )
  // Taken on HOST, free on the metrics host: the metrics listener does not need HOST's port.
  const onHost = takenPort()
  await checkPorts({ HOST: '127.0.0.1', PORT: 0, FANFARE_METRICS_PORT: onHost, FANFARE_METRICS_HOST: '127.0.0.2' })
})

test('an IPv6 host is named in brackets, as in a URL (::1:port would read as another address)', async () => {
  const server = Bun.serve({ port: 0, hostname: '::1', reusePort: false, fetch: () => new Response('not fanfare') })
  taken.push(server)
  await expect(checkPorts({ HOST: '127.0.0.1', PORT: 0, FANFARE_METRICS_PORT: server.port!, FANFARE_METRICS_HOST: '::1' })).rejects.toThrow(
    `cannot listen on [::1]:${server.port}: the port is in use by another process (another Fanfare?): stop it, or set FANFARE_METRICS_PORT to a free port`,
  )
})
