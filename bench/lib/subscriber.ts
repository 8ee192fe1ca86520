import { nowMs } from './stats'

/**
 * One in-process WebSocket subscriber to several channels, recording the latency of every update
 * (receive time minus `data.score`). Works with Fanfare (first frame: snapshot) and the bare
 * servers (first frame: subscribed).
 */
export class Subscriber {
  latencies: number[] = []
  last = 0
  /** Snapshots with resync: true (the hub could not keep the channel gap-free). */
  resyncs = 0
  private constructor(private ws: WebSocket) {}

  static async open(url: string, channels: string[]): Promise<Subscriber> {
    const ws = new WebSocket(url)
    const sub = new Subscriber(ws)
    let acks = 0
    await new Promise<void>((ok, fail) => {
      const timer = setTimeout(() => fail(new Error(`subscriber to ${url} not ready in 30 s`)), 30_000)
      ws.onerror = () => fail(new Error(`subscriber could not connect to ${url}`))
      ws.onopen = () => {
        for (const channel of channels) ws.send(JSON.stringify({ op: 'subscribe', ref: channel, channel }))
      }
      ws.onmessage = (e) => {
        const t = nowMs()
        const f = JSON.parse(String(e.data))
        if (f.op === 'update') {
          sub.latencies.push(t - f.data.score)
          sub.last = t
        } else if (f.op === 'snapshot' && f.resync) {
          sub.resyncs++
        } else if (f.op === 'snapshot' || f.op === 'subscribed') {
          if (++acks === channels.length) clearTimeout(timer), ok()
        } else if (f.op === 'error') fail(new Error(JSON.stringify(f)))
      }
    })
    return sub
  }

  reset() {
    this.latencies = []
    this.last = 0
    this.resyncs = 0
  }

  /** Waits until `expected` updates arrived or none came for `quietMs`. */
  async wait(expected: () => number, quietMs = 5000) {
    let seen = -1
    let since = Date.now()
    while (this.latencies.length < expected()) {
      if (this.latencies.length !== seen) (seen = this.latencies.length), (since = Date.now())
      else if (Date.now() - since > quietMs) return
      await Bun.sleep(10)
    }
  }

  close() {
    this.ws.close()
  }
}
