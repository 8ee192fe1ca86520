import type { Socket } from 'bun'

/**
 * A minimal WebSocket client (RFC 6455, text frames) over a plain TCP socket, for load clients that
 * send many frames at once: `sendAll` writes every frame it is given in one socket write. Bun's
 * `WebSocket.send` writes each frame by itself (a syscall per frame: at 20,000 frames/s that was the
 * largest cost of the end-to-end bench's own process, which also timestamps what its subscriber
 * receives). The server still sees one frame per message, as from any client.
 */
export type FrameSocket = {
  /** Sends each text as its own masked text frame, all in one write. */
  sendAll(texts: string[]): void
  close(): void
}

const encoder = new TextEncoder()
const decoder = new TextDecoder()

/** Opens `ws://host:port/path` and calls `onText` with every text frame the server sends. */
export async function openFrameSocket(host: string, port: number, path: string, onText: (text: string) => void): Promise<FrameSocket> {
  // The 4-byte mask every client frame must carry: one per socket (the server only unmasks).
  const mask = crypto.getRandomValues(new Uint8Array(4))
  let inbox: Uint8Array = new Uint8Array(0)
  let upgraded = false
  let pending: Uint8Array[] = []
  let fragments: Uint8Array[] = []
  let ready: { ok: () => void; fail: (e: Error) => void } | undefined

  const frame = (opcode: number, payload: Uint8Array): Uint8Array => {
    const n = payload.length
    const head = n < 126 ? 2 : n < 65_536 ? 4 : 10
    const out = new Uint8Array(head + 4 + n)
    out[0] = 0x80 | opcode
    if (n < 126) out[1] = 0x80 | n
    else if (n < 65_536) (out[1] = 0x80 | 126), new DataView(out.buffer).setUint16(2, n)
    else (out[1] = 0x80 | 127), new DataView(out.buffer).setBigUint64(2, BigInt(n))
    out.set(mask, head)
    for (let i = 0; i < n; i++) out[head + 4 + i] = payload[i] ^ mask[i & 3]
    return out
  }

  // Writes what the kernel takes now and keeps the rest for `drain`, in order.
  const write = (socket: Socket<undefined>, bytes: Uint8Array) => {
    if (pending.length > 0) return void pending.push(bytes)
    const n = socket.write(bytes)
    if (n < bytes.length) pending.push(bytes.subarray(Math.max(0, n)))
  }

  const concat = (a: Uint8Array, b: Uint8Array) => {
    if (a.length === 0) return b
    const out = new Uint8Array(a.length + b.length)
    out.set(a)
    out.set(b, a.length)
    return out
  }

  const readFrames = (socket: Socket<undefined>) => {
    let at = 0
    while (inbox.length - at >= 2) {
      const b0 = inbox[at]
      let n = inbox[at + 1] & 0x7f
      let head = 2
      if (n === 126) {
        if (inbox.length - at < 4) break
        n = (inbox[at + 2] << 8) | inbox[at + 3]
        head = 4
      } else if (n === 127) {
        if (inbox.length - at < 10) break
        n = Number(new DataView(inbox.buffer, inbox.byteOffset + at + 2, 8).getBigUint64(0))
        head = 10
      }
      if (inbox.length - at < head + n) break
      const payload = inbox.subarray(at + head, at + head + n)
      at += head + n
      const opcode = b0 & 0x0f
      if (opcode === 0x9) write(socket, frame(0xa, payload))
      else if (opcode === 0x8) socket.end()
      else if (opcode === 0x1 || opcode === 0x0) {
        fragments.push(payload)
        if (b0 & 0x80) {
          const whole = fragments.length === 1 ? fragments[0] : fragments.reduce(concat, new Uint8Array(0))
          fragments = []
          onText(decoder.decode(whole))
        }
      }
    }
    inbox = inbox.slice(at)
  }

  const socket = await Bun.connect({
    hostname: host,
    port,
    socket: {
      data(s, data) {
        inbox = concat(inbox, data)
        if (!upgraded) {
          const end = inbox.indexOf(13) === -1 ? -1 : decoder.decode(inbox).indexOf('\r\n\r\n')
          if (end === -1) return
          const head = decoder.decode(inbox.subarray(0, end))
          if (!head.startsWith('HTTP/1.1 101')) return ready?.fail(new Error(`WebSocket upgrade refused: ${head.split('\r\n')[0]}`))
          upgraded = true
          inbox = inbox.slice(end + 4)
          ready?.ok()
        }
        readFrames(s)
      },
      drain(s) {
        const rest = pending
        pending = []
        for (const b of rest) write(s, b)
      },
      close() {
        ready?.fail(new Error('socket closed before the upgrade'))
      },
    },
  })
  const key = Buffer.from(crypto.getRandomValues(new Uint8Array(16))).toString('base64')
  await new Promise<void>((ok, fail) => {
    ready = { ok, fail }
    socket.write(`GET ${path} HTTP/1.1\r\nHost: ${host}:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`)
  })
  ready = undefined
  return {
    sendAll(texts) {
      const frames = texts.map((t) => frame(0x1, encoder.encode(t)))
      const all = new Uint8Array(frames.reduce((n, f) => n + f.length, 0))
      let at = 0
      for (const f of frames) all.set(f, at), (at += f.length)
      write(socket, all)
    },
    close() {
      write(socket, frame(0x8, new Uint8Array([0x03, 0xe8])))
      socket.end()
    },
  }
}
