import { channelVersion, settle, type SoakArea, type SoakContext, type Verdict } from './area'
import { sendUntilAcked, Tally, tallyFindings, type SoakEvent } from './send'
import { untilAt, type ChannelView, type Subscriber } from './subscriber'

const STREAMS = 2
const PAUSE_MS = 150
/** Every this many steps a lane ends its broadcast and starts a new one. */
const BROADCAST_STEPS = 10
const streamId = (s: number) => `soak-s${s}`

type State = { status: string; title: string | null; category: string | null }
const show = (s: State | undefined) => (s ? `${s.status} "${s.title}" (${s.category})` : 'no stream')
const stateOf = (s: any): State | undefined => (s ? { status: s.status, title: s.title, category: s.category } : undefined)
/** Titles are `<n>`, rising in each lane. */
const numberOf = (title: string | null) => (title === null ? -1 : Number(title))

/** A subscriber's stream state, replaced by every `state` change. A title going back is a change out of order. */
class StreamView implements ChannelView {
  state: State | undefined
  snapshot(data: any) {
    this.state = stateOf(data)
  }
  update(data: any) {
    if (data.kind !== 'state') return undefined
    const before = this.state
    this.state = stateOf(data.state)
    return before && numberOf(this.state!.title) < numberOf(before.title) ? `title ${this.state!.title} after ${before.title}` : undefined
  }
}

/**
 * Two broadcasts (`stream:soak-s0`, `stream:soak-s1`): per stream a lane (the ingest key, over REST)
 * renames it with a rising number, and every tenth step ends it and starts it again (in another
 * category), each event sent after the previous was acknowledged. The subscribers are its viewers,
 * so the API node's viewer samples change the stream too (the channel's version is not an oracle
 * here). Oracle: each stream's last acknowledged status, title and category.
 */
export class StreamsArea implements SoakArea {
  readonly name = 'streams'
  readonly tally = new Tally()
  readonly channels = Array.from({ length: STREAMS }, (_, s) => ({ channel: `stream:${streamId(s)}`, subscribers: 1, view: () => new StreamView() }))
  private oracles: (State | undefined)[] = Array.from({ length: STREAMS }, () => undefined)
  private unknown = new Set<number>()

  async prepare() {}

  async ingest(ctx: SoakContext, endAt: number) {
    await Promise.all(Array.from({ length: STREAMS }, (_, s) => this.lane(ctx, s, endAt)))
  }

  private async lane(ctx: SoakContext, s: number, endAt: number) {
    const stream = streamId(s)
    // Step n: a broadcast starts (titled n, in category c<n>), is renamed n, ..., and ends.
    const step = (n: number): { event: SoakEvent; next: (o: State | undefined) => State } => {
      const id = `${ctx.run}-${stream}-${n}`
      const title = String(n)
      if (n % BROADCAST_STEPS === 0) return { event: { id, type: 'stream.started', data: { stream, title, category: `c${n}` } }, next: () => ({ status: 'live', title, category: `c${n}` }) }
      if (n % BROADCAST_STEPS === BROADCAST_STEPS - 1) return { event: { id, type: 'stream.ended', data: { stream } }, next: (o) => ({ ...o!, status: 'offline' }) }
      return { event: { id, type: 'stream.updated', data: { stream, title } }, next: (o) => ({ ...o!, title }) }
    }
    for (let n = 0; Date.now() < endAt || this.oracles[s]?.status === 'offline'; n++) {
      const { event, next } = step(n)
      if (!(await sendUntilAcked(ctx.api.baseUrl, ctx.api.ingestToken, [event], this.tally, ctx.startedAt))) {
        this.unknown.add(s)
        return
      }
      this.oracles[s] = next(this.oracles[s])
      await Bun.sleep(PAUSE_MS)
    }
  }

  async check(ctx: SoakContext, subs: Subscriber[]): Promise<Verdict> {
    const { broken, notes } = tallyFindings(this.name, this.tally)
    const summary = [`streams: ${this.tally.line()}`]
    for (let s = 0; s < STREAMS; s++) {
      const id = streamId(s)
      const oracle = this.oracles[s]
      const readDb = async () => stateOf((await ctx.sql`SELECT status, title, category FROM streams WHERE stream = ${id}`)[0])
      const db = await settle(readDb, (st) => show(st) === show(oracle), 60_000)
      const version = await channelVersion(ctx.sql, `stream:${id}`)
      const mine = subs.filter((x) => x.channel === `stream:${id}`)
      await untilAt(mine, version)
      const res = await fetch(`${ctx.api.baseUrl}/v1/streams/${id}`)
      const rest = res.status === 200 ? stateOf(await res.json()) : undefined
      if (!this.unknown.has(s) && show(db) !== show(oracle)) broken.push(`streams: ${id}: read model ${show(db)} != last acknowledged ${show(oracle)}`)
      if (show(rest) !== show(db)) broken.push(`streams: ${id}: REST ${show(rest)} != read model ${show(db)}`)
      for (const x of mine) {
        // Viewer samples move the version after the check read it: wait for the subscriber, then compare with it.
        const f = x.findings(Math.max(version, x.version))
        broken.push(...f.broken)
        notes.push(...f.notes)
        const view = (x.view as StreamView).state
        if (show(view) !== show(rest)) broken.push(`${x.name}: view ${show(view)} != REST ${show(rest)}`)
      }
      summary.push(`streams: ${id}: version ${version}, ${show(db)}`)
    }
    return { broken, notes, summary: [...summary, ...subs.map((x) => x.line())] }
  }
}
