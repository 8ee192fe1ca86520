import { until } from '../../test/e2e/harness'

/**
 * How a subscriber keeps its own state of one channel, from the frames' `data` alone (an area's
 * snapshot and update shapes, see the README's WebSocket protocol).
 */
export interface ChannelView {
  /** Replaces the state with a snapshot's data. */
  snapshot(data: any): void
  /** Applies an update's data; returns what it shows was broken (a change out of its order), if anything. */
  update(data: any): string | undefined
}

/**
 * One raw WebSocket following one channel: applies snapshots and updates to its view, keeps the
 * version and epoch of the last frame it applied, and when its socket closes reconnects and resumes
 * with them. Counts what the protocol promises never happens silently: an update that is not the
 * next version (a gap, or a repeat), and what its view says broke (`disorders`).
 */
export class Subscriber<V extends ChannelView = ChannelView> {
  version = -1
  epoch = ''
  updates = 0
  snapshots = 0
  resyncs = 0
  recovered = 0
  reconnects = 0
  gaps = 0
  repeats = 0
  /** What the view found broken, with how many times (the first few kept). */
  disorders: string[] = []
  disorderCount = 0
  /** Resync snapshots older than an update already applied in their epoch (the README says never). */
  staleSnapshots = 0
  /** `subscribed` answers to a resume at another version or epoch than asked for (any epoch answers a resume from 0). */
  badResumes = 0
  /** Close codes of the sockets cut under it, with their counts (a refused reconnect is a 1006). */
  closeCodes: Record<number, number> = {}
  errors: string[] = []
  private ws: WebSocket | undefined
  private stopped = false

  constructor(
    readonly name: string,
    readonly channel: string,
    readonly view: V,
    private readonly url: () => string,
  ) {}

  async start() {
    this.connect()
    await until(`${this.name}'s snapshot`, () => this.version >= 0, 30_000, 100)
  }

  stop() {
    this.stopped = true
    this.ws?.close()
  }

  /** One line: version, frames, resumes, reconnects, and what broke. */
  line(): string {
    return `${this.name}: version ${this.version}, ${this.updates} updates, ${this.snapshots} snapshots (${this.resyncs} resync), ${this.recovered} resumed, ${this.reconnects} reconnects (closes ${Object.entries(this.closeCodes).map(([c, n]) => `${c} x${n}`).join(', ') || '-'}), gaps ${this.gaps}, repeats ${this.repeats}, out of order ${this.disorderCount}`
  }

  /** The protocol's promises this subscriber saw broken, and where it stands against the read model's `version`. */
  findings(version: number): { broken: string[]; notes: string[] } {
    const broken: string[] = []
    if (this.gaps > 0) broken.push(`${this.name}: ${this.gaps} silent gaps`)
    if (this.repeats > 0) broken.push(`${this.name}: ${this.repeats} repeated versions`)
    if (this.disorderCount > 0) broken.push(`${this.name}: ${this.disorderCount} changes out of order (${this.disorders.join('; ')})`)
    if (this.staleSnapshots > 0) broken.push(`${this.name}: ${this.staleSnapshots} resync snapshots older than what it held`)
    if (this.badResumes > 0) broken.push(`${this.name}: ${this.badResumes} resumes answered at another version or epoch`)
    if (this.version !== version) broken.push(`${this.name}: at version ${this.version}, read model at ${version}`)
    return { broken, notes: this.errors.length > 0 ? [`${this.name}: error frames ${this.errors.join(', ')}`] : [] }
  }

  private connect() {
    const ws = new WebSocket(this.url())
    this.ws = ws
    ws.onopen = () => {
      const resume = this.version >= 0 ? { since: this.version, epoch: this.epoch } : {}
      ws.send(JSON.stringify({ op: 'subscribe', ref: 's', channel: this.channel, ...resume }))
    }
    ws.onmessage = (e) => this.receive(JSON.parse(String(e.data)))
    ws.onclose = (e) => {
      if (this.ws !== ws) return
      this.ws = undefined
      if (this.stopped) return
      this.closeCodes[e.code] = (this.closeCodes[e.code] ?? 0) + 1
      this.reconnects++
      setTimeout(() => !this.stopped && this.connect(), 250)
    }
  }

  /** Applies one frame from the server (what the socket delivers). */
  receive(f: any) {
    if (f.op === 'error') {
      this.errors.push(f.error?.code)
      // A refused subscribe (rate_limited): reconnecting subscribes again.
      if (f.ref === 's') this.ws?.close()
      return
    }
    if (f.channel !== this.channel) return
    if (f.op === 'snapshot') {
      this.snapshots++
      if (f.resync) this.resyncs++
      if (f.epoch === this.epoch && f.version < this.version) this.staleSnapshots++
      this.view.snapshot(f.data)
      this.version = f.version
      this.epoch = f.epoch
    } else if (f.op === 'subscribed') {
      this.recovered++
      // Version 0 is the empty state of every epoch: a resume from it is answered in the channel's current one.
      if (f.version !== this.version || (f.epoch !== this.epoch && this.version !== 0)) this.badResumes++
      this.epoch = f.epoch
    } else if (f.op === 'update') {
      this.updates++
      const from = f.from ?? f.version
      if (f.epoch !== this.epoch && this.version > 0) this.gaps++
      else if (f.version <= this.version) this.repeats++
      else if (from !== this.version + 1) this.gaps++
      const problem = this.view.update(f.data)
      if (problem !== undefined) {
        this.disorderCount++
        if (this.disorders.length < 3) this.disorders.push(`version ${f.version}: ${problem}`)
      }
      this.version = Math.max(this.version, f.version)
      this.epoch = f.epoch
    }
  }
}

/** Waits (up to `timeoutMs`) for every subscriber to reach `version`; a laggard is reported by its findings. */
export async function untilAt(subscribers: Subscriber[], version: number, timeoutMs = 30_000) {
  await until('every subscriber at the read model\'s version', () => subscribers.every((s) => s.version >= version), timeoutMs, 100).catch(() => {})
}
