import { connect, type Socket } from 'node:net'
import { maskedFrame, upgradeRequest } from '../../core/testing/raw-websocket'

/**
 * A subscriber that stopped reading (a phone on a bad link): a raw WebSocket that subscribes, stops
 * reading, then sends `flood` frames `count` times, whose answers fill the kernel's buffers and
 * then the server's queue for it, so that every publish to its channel reports backpressure.
 */
export async function stalledSubscriber(url: string, subscribe: string, flood: string, count: number): Promise<{ close: () => void }> {
  const u = new URL(url)
  const socket: Socket = connect({ host: u.hostname, port: Number(u.port) })
  await new Promise<void>((ok, fail) => socket.once('connect', () => ok()).once('error', fail))
  let got = ''
  socket.on('data', (c: Buffer) => (got += c.toString('latin1')))
  socket.on('error', () => {})
  socket.write(upgradeRequest(u.host, u.pathname))
  const deadline = Date.now() + 10_000
  while (!got.includes('\r\n\r\n') && Date.now() < deadline) await Bun.sleep(5)
  socket.write(maskedFrame(subscribe))
  while (!/"op":"(snapshot|subscribed)"/.test(got) && Date.now() < deadline) await Bun.sleep(5)
  if (Date.now() >= deadline) throw new Error(`stalled subscriber could not subscribe: ${got.slice(0, 300)}`)
  socket.pause()
  const frame = maskedFrame(flood)
  for (let i = 0; i < count; i += 1000) socket.write(Buffer.concat(Array.from({ length: Math.min(1000, count - i) }, () => frame)))
  await Bun.sleep(1500) // the server reads and answers the flood
  return { close: () => socket.destroy() }
}
