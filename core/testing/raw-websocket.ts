/**
 * A WebSocket spoken by hand over TCP, for tests and benchmarks that need what a WebSocket client
 * will not do: stop reading (a stalled subscriber), or send a text frame that is not UTF-8.
 */

/** The upgrade request for `path` on `host` (with its port), with a fixed key. */
export function upgradeRequest(host: string, path = '/v1/ws'): string {
  return (
    `GET ${path} HTTP/1.1\r\nHost: ${host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
    `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`
  )
}

/**
 * A client text frame (masked, as RFC 6455 5.3 requires of clients) holding `payload`: bytes as
 * they are, a string as UTF-8, anything else as its JSON. Up to 64 KiB.
 */
export function maskedFrame(payload: Uint8Array | string | object): Buffer {
  const bytes =
    payload instanceof Uint8Array ? Buffer.from(payload) : Buffer.from(typeof payload === 'string' ? payload : JSON.stringify(payload))
  const n = bytes.length
  const mask = Buffer.from([1, 2, 3, 4])
  const length = n < 126 ? Buffer.from([0x80 | n]) : Buffer.from([0x80 | 126, n >> 8, n & 0xff])
  return Buffer.concat([Buffer.from([0x81]), length, mask, Buffer.from(bytes.map((b, i) => b ^ mask[i % 4]))])
}

/** The code of the first close frame among the server's frames after the handshake, if one came whole. */
export function closeCodeIn(bytes: Buffer): number | undefined {
  let i = bytes.indexOf('\r\n\r\n')
  if (i < 0) return undefined
  i += 4
  while (i + 2 <= bytes.length) {
    const opcode = bytes[i] & 0x0f
    let len = bytes[i + 1] & 0x7f
    let off = i + 2
    if (len === 126) (len = bytes.readUInt16BE(off)), (off += 2)
    else if (len === 127) (len = Number(bytes.readBigUInt64BE(off))), (off += 8)
    if (off + len > bytes.length) return undefined
    if (opcode === 8) return len >= 2 ? bytes.readUInt16BE(off) : 1005
    i = off + len
  }
  return undefined
}
