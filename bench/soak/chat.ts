import { channelVersion, settle, type SoakArea, type SoakContext, type Verdict } from './area'
import { sendUntilAcked, Tally, tallyFindings, type SoakEvent } from './send'
import { untilAt, type ChannelView, type Subscriber } from './subscriber'
import { WsPublisher } from './ws-publisher'

const ROOM = 'soak'
const CHANNEL = `chat:${ROOM}`
const LANES = 2
const BATCH = 20
/** Of each acknowledged batch, this many of its messages are then deleted (by the admin token, as a moderator would). */
const DELETES_PER_BATCH = 2
const PAUSE_MS = 200
/** Every this many REST batches, one is sent again after its ack. */
const RESEND_EVERY = 5
/** A user posting over their WebSocket, one message after the other's ack (so their order is the oracle's): the lane after the REST ones. */
const WS_LANE = LANES
const WS_PAUSE_MS = 40

/** A message's text names its lane and its number in the lane, which rises: a room shows them in that order. */
const textOf = (lane: number, n: number) => `${lane}:${n}`
const parseText = (text: string) => text.split(':').map(Number) as [number, number]

/**
 * A subscriber's room: the messages it holds, oldest first (a snapshot holds the latest 50). A
 * message posted twice, or before an earlier one of its lane, is a change out of order.
 */
export class RoomView implements ChannelView {
  ids: string[] = []
  private held = new Set<string>()
  private lastOfLane = new Map<number, number>()
  snapshot(data: any) {
    const messages = [...data.messages].reverse() as { id: string; text: string }[]
    this.ids = messages.map((m) => m.id)
    this.held = new Set(this.ids)
    this.lastOfLane = new Map(messages.map((m) => parseText(m.text)))
  }
  update(data: any) {
    if (data.kind === 'deleted') {
      if (this.held.delete(data.messageId)) this.ids.splice(this.ids.indexOf(data.messageId), 1)
      return undefined
    }
    const { id, text } = data.message as { id: string; text: string }
    const [lane, n] = parseText(text)
    const last = this.lastOfLane.get(lane)
    this.lastOfLane.set(lane, n)
    if (this.held.has(id)) return `message ${id} posted twice`
    this.ids.push(id)
    this.held.add(id)
    return last !== undefined && n <= last ? `lane ${lane}: message ${n} after ${last}` : undefined
  }
}

/**
 * Chat in one room (`chat:soak`): two lanes post batches of 20 messages (the ingest key, on behalf
 * of a user each; every fifth batch sent again once acknowledged, which must be reported duplicate
 * and change nothing), and a user posts as themselves over their WebSocket (resending what was not
 * acknowledged on their next socket), each lane's messages numbered in order; after each
 * acknowledged batch the admin token deletes two of it. Oracle: the acknowledged posts, each once, each lane in its order, the
 * acknowledged deletes marked; the channel's version is one per post and per delete.
 */
export class ChatArea implements SoakArea {
  readonly name = 'chat'
  readonly tally = new Tally()
  readonly channels = [{ channel: CHANNEL, subscribers: 2, view: () => new RoomView() }]
  private posted: string[] = []
  private deleted = new Set<string>()
  private deletes = new Tally()
  private wsPosts = new Tally()
  /** Batches sent again after their ack: never counted in the oracle. */
  private resent = new Tally()

  async prepare() {}

  async ingest(ctx: SoakContext, endAt: number) {
    await Promise.all([...Array.from({ length: LANES }, (_, lane) => this.lane(ctx, lane, endAt)), this.wsLane(ctx, endAt)])
  }

  private async wsLane(ctx: SoakContext, endAt: number) {
    const user = `chatter${WS_LANE}`
    const ws = new WsPublisher(`${ctx.api.baseUrl.replace('http', 'ws')}/v1/ws?token=${await ctx.userToken(user)}`, this.wsPosts, ctx.startedAt)
    for (let n = 0; Date.now() < endAt; n++) {
      const id = `${ctx.run}-c${WS_LANE}-${n}`
      // One given up leaves the lane's order unknown: the lane stops (and the exact checks are skipped).
      if (!(await ws.publish({ id, type: 'chat.message.posted', data: { room: ROOM, user, text: textOf(WS_LANE, n) } }))) break
      this.posted.push(id)
      await Bun.sleep(WS_PAUSE_MS)
    }
    ws.stop()
  }

  private async lane(ctx: SoakContext, lane: number, endAt: number) {
    for (let b = 0; Date.now() < endAt; b++) {
      const batch: SoakEvent[] = Array.from({ length: BATCH }, (_, k) => ({
        id: `${ctx.run}-c${lane}-${b * BATCH + k}`,
        type: 'chat.message.posted',
        data: { room: ROOM, user: `chatter${lane}`, text: textOf(lane, b * BATCH + k) },
      }))
      if (await sendUntilAcked(ctx.api.baseUrl, ctx.api.ingestToken, batch, this.tally, ctx.startedAt)) {
        this.posted.push(...batch.map((e) => e.id))
        // Every fifth batch is sent again, as by a client that lost the ack: every event reported duplicate, none posted twice.
        if (b % RESEND_EVERY === RESEND_EVERY - 1) await sendUntilAcked(ctx.api.baseUrl, ctx.api.ingestToken, batch, this.resent, ctx.startedAt)
        const deletes: SoakEvent[] = batch.slice(0, DELETES_PER_BATCH).map((e) => ({ id: `${e.id}-del`, type: 'chat.message.deleted', data: { room: ROOM, messageId: e.id } }))
        if (await sendUntilAcked(ctx.api.baseUrl, ctx.api.adminToken, deletes, this.deletes, ctx.startedAt)) for (const d of deletes) this.deleted.add(d.data.messageId as string)
      }
      await Bun.sleep(PAUSE_MS)
    }
  }

  async check(ctx: SoakContext, subs: Subscriber[]): Promise<Verdict> {
    const findings = [tallyFindings('chat posts (REST)', this.tally), tallyFindings('chat posts (WebSocket)', this.wsPosts), tallyFindings('chat deletes', this.deletes)]
    const broken = findings.flatMap((f) => f.broken)
    if (this.resent.duplicates !== this.resent.acked) broken.push(`chat: ${this.resent.acked - this.resent.duplicates} of ${this.resent.acked} messages sent again after their ack not reported duplicate`)
    const notes = findings.flatMap((f) => f.notes)
    const exact = this.tally.givenUp === 0 && this.deletes.givenUp === 0 && this.wsPosts.givenUp === 0
    const expected = this.posted.length + this.deleted.size
    const version = await settle(() => channelVersion(ctx.sql, CHANNEL), (v) => v >= expected, 60_000)
    await untilAt(subs, version)

    const rows = await ctx.sql`SELECT id, text, deleted FROM chat_messages WHERE room = ${ROOM} ORDER BY seq`
    const stored = new Map(rows.map((r) => [r.id as string, r.deleted as boolean]))
    const lost = this.posted.filter((id) => !stored.has(id))
    if (lost.length > 0) broken.push(`chat: ${lost.length} acknowledged messages lost (${lost.slice(0, 3).join(', ')})`)
    const notDeleted = [...this.deleted].filter((id) => stored.get(id) === false)
    if (notDeleted.length > 0) broken.push(`chat: ${notDeleted.length} acknowledged deletes not applied (${notDeleted.slice(0, 3).join(', ')})`)
    const wronglyDeleted = this.posted.filter((id) => stored.get(id) === true && !this.deleted.has(id))
    if (exact && wronglyDeleted.length > 0) broken.push(`chat: ${wronglyDeleted.length} messages deleted that no delete named`)
    const lastOfLane = new Map<number, number>()
    const disorder: string[] = []
    for (const r of rows) {
      const [lane, n] = parseText(r.text)
      if ((lastOfLane.get(lane) ?? -1) >= n) disorder.push(`lane ${lane}: ${n} after ${lastOfLane.get(lane)}`)
      lastOfLane.set(lane, n)
    }
    if (disorder.length > 0) broken.push(`chat: ${disorder.length} messages out of their lane's order in the room (${disorder.slice(0, 3).join('; ')})`)
    if (version < expected) broken.push(`chat: acknowledged changes lost: channel version ${version} < ${expected} (${this.posted.length} posts, ${this.deleted.size} deletes acknowledged)`)
    const sent = [this.tally, this.wsPosts, this.deletes].reduce((n, t) => n + t.acked + t.givenUp, 0)
    if (version > sent) broken.push(`chat: changes applied twice: channel version ${version} > ${sent} events sent`)
    if (exact && rows.length !== this.posted.length) broken.push(`chat: ${rows.length} messages stored, ${this.posted.length} acknowledged`)

    const visible = rows.filter((r) => !r.deleted).map((r) => r.id as string)
    const rest = await restRoom(ctx.api.baseUrl)
    const restProblem = sameList(rest, visible)
    if (restProblem) broken.push(`chat: REST room != read model: ${restProblem}`)
    for (const s of subs) {
      const f = s.findings(version)
      broken.push(...f.broken)
      notes.push(...f.notes)
      const ids = (s.view as RoomView).ids
      const from = ids.length === 0 ? rest.length : rest.indexOf(ids[0])
      const viewProblem = from < 0 ? `its oldest message ${ids[0]} is not in the REST room` : sameList(ids, rest.slice(from))
      if (viewProblem) broken.push(`${s.name}: view != REST room: ${viewProblem}`)
    }
    return {
      broken,
      notes,
      summary: [
        `chat: posts over REST ${this.tally.line()}`,
        `chat: posts over WebSocket ${this.wsPosts.line()}`,
        `chat: posts sent again after their ack ${this.resent.line()}`,
        `chat: deletes ${this.deletes.line()}`,
        `chat: read model version ${version}, ${rows.length} messages (${rows.length - visible.length} deleted); REST room ${rest.length} messages`,
        ...subs.map((s) => s.line()),
      ],
    }
  }
}

/** Where two id lists first differ, or undefined when equal. */
function sameList(actual: string[], expected: string[]): string | undefined {
  for (let i = 0; i < Math.max(actual.length, expected.length); i++) {
    if (actual[i] !== expected[i]) return `at ${i} of ${expected.length}: expected ${expected[i]}, got ${actual[i]} (${actual.length} held)`
  }
  return undefined
}

/** The whole room through REST (newest first, page after page), oldest first. */
async function restRoom(baseUrl: string): Promise<string[]> {
  const ids: string[] = []
  for (;;) {
    const before = ids.length > 0 ? `&before=${encodeURIComponent(ids.at(-1)!)}` : ''
    const res = await fetch(`${baseUrl}/v1/rooms/${ROOM}/messages?limit=100${before}`)
    if (res.status !== 200) throw new Error(`GET /v1/rooms/${ROOM}/messages: ${res.status} ${await res.text()}`)
    const page = (await res.json()) as { messages: { id: string }[] }
    ids.push(...page.messages.map((m) => m.id))
    if (page.messages.length < 100) return ids.reverse()
  }
}
