import { GIVE_UP_MS, type SoakEvent, type Tally } from './send'

type Pending = { event: SoakEvent; resolve: (acked: boolean) => void; giveUpAt: number; attempts: number; sent: boolean }

/**
 * A client publishing over one WebSocket as its token's principal, as the SDK does: every event
 * with a `ref`, kept until its `ack`; refused ones (`rate_limited`: after the wait it names; a
 * transient error: after 250 ms) and all those unanswered when the socket closes (sent again on the
 * next socket) are resent with the same ids. Answers are counted in `tally` (`ack`, `error <code>`,
 * `close <code>`).
 */
export class WsPublisher {
  private ws: WebSocket | undefined
  private open = false
  private pending = new Map<string, Pending>()
  private nextRef = 0
  private stopped = false

  constructor(
    private readonly url: string,
    private readonly tally: Tally,
    private readonly startedAt: number,
  ) {
    this.connect()
  }

  /** Publishes `event` until acknowledged; false when given up after GIVE_UP_MS (or refused as invalid). */
  publish(event: SoakEvent): Promise<boolean> {
    this.tally.sent++
    return new Promise((resolve) => {
      const ref = `r${this.nextRef++}`
      this.pending.set(ref, { event, resolve, giveUpAt: Date.now() + GIVE_UP_MS, attempts: 0, sent: false })
      this.send(ref)
    })
  }

  stop() {
    this.stopped = true
    this.ws?.close()
  }

  private count(label: string) {
    this.tally.answers[label] = (this.tally.answers[label] ?? 0) + 1
  }

  private send(ref: string) {
    const p = this.pending.get(ref)
    if (!p) return
    if (!this.open) return void (p.sent = false)
    p.sent = true
    p.attempts++
    this.ws!.send(JSON.stringify({ op: 'publish', ref, event: p.event }))
  }

  private settle(ref: string, acked: boolean, duplicate = false) {
    const p = this.pending.get(ref)
    if (!p) return
    this.pending.delete(ref)
    if (acked) {
      if (duplicate && p.attempts === 1) this.tally.freshDuplicates++
      if (duplicate && p.attempts > 1) this.tally.resentDuplicates++
      this.tally.acked++
      const second = Math.floor((Date.now() - this.startedAt) / 1000)
      this.tally.perSecond[second] = (this.tally.perSecond[second] ?? 0) + 1
    } else this.tally.givenUp++
    p.resolve(acked)
  }

  private connect() {
    const ws = new WebSocket(this.url)
    this.ws = ws
    ws.onopen = () => {
      this.open = true
      for (const ref of this.pending.keys()) this.send(ref)
    }
    ws.onmessage = (e) => {
      const f = JSON.parse(String(e.data))
      if (f.op === 'ack') {
        this.count('ack')
        this.settle(f.ref, true, f.duplicate)
      } else if (f.op === 'error' && f.ref && this.pending.has(f.ref)) {
        const code = f.error?.code
        this.count(`error ${code}`)
        const p = this.pending.get(f.ref)!
        if (code === 'invalid_event' || code === 'forbidden' || Date.now() > p.giveUpAt) return this.settle(f.ref, false)
        setTimeout(() => this.send(f.ref), code === 'rate_limited' ? Number(f.error?.retryAfterMs ?? 100) : 250)
      }
    }
    ws.onclose = (e) => {
      if (this.ws !== ws) return
      this.open = false
      this.ws = undefined
      if (this.stopped) return
      this.count(`close ${e.code}`)
      for (const [ref, p] of this.pending) if (Date.now() > p.giveUpAt) this.settle(ref, false)
      setTimeout(() => !this.stopped && this.connect(), 250)
    }
  }
}
