import { expect, test } from 'bun:test'
import { createServer } from 'node:net'
import { connectNats } from './nats'

/** A port nothing listens on: one the OS just handed out and took back. */
async function closedPort(): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as { port: number }
  await new Promise((resolve) => server.close(resolve))
  return port
}

test('a NATS_URL nobody answers at is refused naming NATS_URL and the server, never the password', async () => {
  const port = await closedPort()
  // nats.js says only "connection refused": an operator could not tell which setting was wrong.
  const failure = connectNats(`nats://fanfare:s3cret@127.0.0.1:${port}`, 'connect-test')
  await expect(failure).rejects.toThrow(`cannot reach NATS at NATS_URL (nats://127.0.0.1:${port})`)
  await expect(failure).rejects.not.toThrow(/s3cret/)
})
