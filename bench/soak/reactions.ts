import { channelVersion, settle, type SoakArea, type SoakContext, type Verdict } from './area'
import { sendUntilAcked, Tally, tallyFindings, type SoakEvent } from './send'
import { untilAt, type ChannelView, type Subscriber } from './subscriber'
import { WsPublisher } from './ws-publisher'

const STREAM = 'soak'
const CHANNEL = `reactions:${STREAM}`
const EMOJIS = ['👏', '🔥', '❤️', '😂']
const LANES = 2
const BATCH = 50
const PAUSE_MS = 100
/** Every this many REST batches, one is sent again after its ack (its reactions must count once). */
const RESEND_EVERY = 4
/** Users reacting over their own WebSocket (the usual way), a few reactions in flight each, under the per-socket rate (20/s). */
const WS_USERS = 6
const WS_IN_FLIGHT = 4
const WS_PAUSE_MS = 70

type Totals = Record<string, number>
const show = (t: Totals) => EMOJIS.map((e) => `${e} ${t[e] ?? 0}`).join(', ')
const same = (a: Totals, b: Totals) => Object.keys({ ...a, ...b }).every((e) => (a[e] ?? 0) === (b[e] ?? 0))

/**
 * A subscriber's totals. Each update names the emojis it changed with their reactions in the
 * window (`counts`) and their new totals: applied in order, a total is the one held plus its count,
 * so anything else is a change missed or applied twice, whatever the versions say.
 */
export class ReactionsView implements ChannelView {
  totals: Totals = {}
  snapshot(data: any) {
    this.totals = { ...data.totals }
  }
  update(data: any) {
    const problems: string[] = []
    for (const [emoji, total] of Object.entries(data.totals as Totals)) {
      const held = this.totals[emoji] ?? 0
      if (total !== held + (data.counts[emoji] ?? 0)) problems.push(`${emoji}: total ${total} after ${held} + ${data.counts[emoji] ?? 0}`)
      this.totals[emoji] = total
    }
    return problems.length > 0 ? problems.join(', ') : undefined
  }
}

/**
 * Reactions to one stream (`reactions:soak`), four emojis in turn: two lanes send batches of 50
 * reactions with ids (the ingest key, over REST; every fourth batch sent again once acknowledged, as
 * by a client that lost the ack), and six users react over their WebSockets,
 * resending what was not acknowledged on their next socket. API nodes store them in batched
 * messages and acks never say duplicate, so a resend is counted once by the workers. Oracle: per
 * emoji, the acknowledged reactions.
 */
export class ReactionsArea implements SoakArea {
  readonly name = 'reactions'
  readonly tally = new Tally()
  private readonly wsTally = new Tally()
  /** Batches sent again after their ack: never counted in the oracle. */
  private readonly resent = new Tally()
  readonly channels = [{ channel: CHANNEL, subscribers: 2, view: () => new ReactionsView() }]
  private acked: Totals = {}

  async prepare() {}

  async ingest(ctx: SoakContext, endAt: number) {
    await Promise.all([...Array.from({ length: LANES }, (_, lane) => this.lane(ctx, lane, endAt)), ...Array.from({ length: WS_USERS }, (_, u) => this.user(ctx, u, endAt))])
  }

  private count(emoji: string) {
    this.acked[emoji] = (this.acked[emoji] ?? 0) + 1
  }

  private async user(ctx: SoakContext, u: number, endAt: number) {
    const token = await ctx.userToken(`reactor${u}`)
    const ws = new WsPublisher(`${ctx.api.baseUrl.replace('http', 'ws')}/v1/ws?token=${token}`, this.wsTally, ctx.startedAt)
    const inFlight = new Set<Promise<unknown>>()
    for (let i = 0; Date.now() < endAt; i++) {
      const emoji = EMOJIS[(i + u) % EMOJIS.length]
      const p: Promise<unknown> = ws.publish({ id: `${ctx.run}-w${u}-${i}`, type: 'reaction.sent', data: { stream: STREAM, emoji } }).then((acked) => {
        if (acked) this.count(emoji)
        inFlight.delete(p)
      })
      inFlight.add(p)
      if (inFlight.size >= WS_IN_FLIGHT) await Promise.race(inFlight)
      await Bun.sleep(WS_PAUSE_MS)
    }
    await Promise.all(inFlight)
    ws.stop()
  }

  private async lane(ctx: SoakContext, lane: number, endAt: number) {
    for (let b = 0; Date.now() < endAt; b++) {
      const batch: SoakEvent[] = Array.from({ length: BATCH }, (_, k) => ({
        id: `${ctx.run}-r${lane}-${b * BATCH + k}`,
        type: 'reaction.sent',
        data: { stream: STREAM, emoji: EMOJIS[(b * BATCH + k) % EMOJIS.length] },
      }))
      if (await sendUntilAcked(ctx.api.baseUrl, ctx.api.ingestToken, batch, this.tally, ctx.startedAt)) {
        for (const e of batch) this.count(e.data.emoji as string)
        // Every fourth batch is sent again, as by a client that lost the ack: stored again, counted once.
        if (b % RESEND_EVERY === RESEND_EVERY - 1) await sendUntilAcked(ctx.api.baseUrl, ctx.api.ingestToken, batch, this.resent, ctx.startedAt)
      }
      await Bun.sleep(PAUSE_MS)
    }
  }

  async check(ctx: SoakContext, subs: Subscriber[]): Promise<Verdict> {
    const fromRest = tallyFindings('reactions (REST)', this.tally)
    const fromWs = tallyFindings('reactions (WebSocket)', this.wsTally)
    const broken = [...fromRest.broken, ...fromWs.broken]
    const notes = [...fromRest.notes, ...fromWs.notes]
    const acked = this.tally.acked + this.wsTally.acked
    const givenUp = this.tally.givenUp + this.wsTally.givenUp
    const readDb = async (): Promise<Totals> => {
      const rows = await ctx.sql`SELECT emoji, count FROM reaction_totals WHERE stream = ${STREAM}`
      return Object.fromEntries(rows.map((r) => [r.emoji as string, Number(r.count)]))
    }
    const sum = (t: Totals) => Object.values(t).reduce((a, b) => a + b, 0)
    await settle(readDb, (t) => sum(t) >= acked, 60_000)
    await Bun.sleep(2000)
    const db = await readDb()
    const version = await channelVersion(ctx.sql, CHANNEL)
    await untilAt(subs, version)

    if (sum(db) < acked) broken.push(`reactions: acknowledged reactions lost: ${sum(db)} counted, ${acked} acknowledged`)
    if (sum(db) > acked + givenUp) broken.push(`reactions: reactions counted twice: ${sum(db)} counted, ${acked + givenUp} sent (and ${this.resent.sent} sent again after their ack)`)
    if (givenUp === 0 && !same(db, this.acked)) broken.push(`reactions: read model (${show(db)}) != acknowledged (${show(this.acked)})`)
    const res = await fetch(`${ctx.api.baseUrl}/v1/streams/${STREAM}/reactions`)
    const rest: Totals = res.status === 200 ? (await res.json()).totals : {}
    if (!same(rest, db)) broken.push(`reactions: REST totals (${show(rest)}) != read model (${show(db)})`)
    for (const s of subs) {
      const f = s.findings(version)
      broken.push(...f.broken)
      notes.push(...f.notes)
      const view = (s.view as ReactionsView).totals
      if (!same(view, rest)) broken.push(`${s.name}: totals (${show(view)}) != REST totals (${show(rest)})`)
    }
    return {
      broken,
      notes,
      summary: [`reactions: REST ${this.tally.line()}`, `reactions: WebSocket ${this.wsTally.line()}`, `reactions: sent again after their ack ${this.resent.line()}`, `reactions: read model version ${version}, ${show(db)}`, ...subs.map((s) => s.line())],
    }
  }
}
