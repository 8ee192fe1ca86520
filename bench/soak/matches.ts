import { channelVersion, settle, type SoakArea, type SoakContext, type Verdict } from './area'
import { sendUntilAcked, Tally, tallyFindings, type SoakEvent } from './send'
import { untilAt, type ChannelView, type Subscriber } from './subscriber'

const MATCHES = 4
const MAX_PLAYERS = 3
/** Players per match: more than its seats, so some joins are refused `full`. */
const PLAYERS = 5
const PAUSE_MS = 150
const matchId = (m: number) => `soak-m${m}`
const playerId = (m: number, p: number) => `m${m}-p${p}`

type Seats = { status: string; players: { player: string; ready: boolean }[] }
const show = (s: Seats | undefined) => (s ? `${s.status} [${s.players.map((p) => `${p.player}${p.ready ? '*' : ''}`).join(' ')}]` : 'no match')
const seatsOf = (m: any): Seats | undefined => (m ? { status: m.status, players: m.players.map((p: { player: string; ready: boolean }) => ({ player: p.player, ready: p.ready })) } : undefined)

/** A subscriber's match: its seats from `joined`, `ready` and `left`. A seat taken twice, or past the match's size, is a change out of order. */
export class MatchChannelView implements ChannelView {
  seats: Seats | undefined
  snapshot(data: any) {
    this.seats = seatsOf(data)
  }
  update(data: any) {
    if (data.kind === 'created') {
      this.seats = seatsOf(data.match)
      return undefined
    }
    if (!this.seats) return `${data.kind} before the match was created`
    const s = this.seats
    s.status = data.status
    const seat = s.players.find((p) => p.player === data.player)
    switch (data.kind) {
      case 'joined':
        if (seat) return `${data.player} seated twice`
        s.players.push({ player: data.player, ready: false })
        return s.players.length > MAX_PLAYERS ? `${s.players.length} seated of ${MAX_PLAYERS}` : undefined
      case 'ready':
        if (!seat) return `${data.player} ready without a seat`
        seat.ready = true
        return undefined
      case 'left':
        if (!seat) return `${data.player} left without a seat`
        s.players = s.players.filter((p) => p !== seat)
        return undefined
      default:
        return undefined
    }
  }
}

/** A player's private channel: the decisions on their joins, in order (`accepted` or the refusal's reason). */
class DecisionsView implements ChannelView {
  decisions: string[] = []
  snapshot() {
    // A snapshot holds no past decisions: the view then compares with the latest ones.
    this.decisions = []
  }
  update(data: any) {
    if (data.kind === 'match.join') this.decisions.push(data.accepted ? 'accepted' : data.reason)
    return undefined
  }
}

/** The oracle of one match: what the acknowledged events, in the order they were sent (each after the previous was acknowledged), decide. */
export class MatchOracle {
  seats: Seats = { status: 'open', players: [] }
  /** Changes the events made: the creation, every join (seated or refused), every ready and leave of a seated player. */
  changes = 1
  accepted = 0
  rejected = 0
  /** Each player's join decisions, in order. */
  decisions = new Map<string, string[]>()
  apply(kind: string, player?: string) {
    const s = this.seats
    const seat = s.players.find((p) => p.player === player)
    const live = s.status === 'open' || s.status === 'full'
    if (kind === 'match.join') {
      this.changes++
      const decided = this.decisions.get(player!) ?? []
      this.decisions.set(player!, decided)
      if (!seat && s.status === 'open') {
        s.players.push({ player: player!, ready: false })
        this.accepted++
        decided.push('accepted')
      } else {
        this.rejected++
        decided.push(seat ? 'already_joined' : s.status)
      }
    } else if (kind === 'match.ready' && seat && !seat.ready && live) {
      seat.ready = true
      this.changes++
    } else if (kind === 'match.leave' && seat && (live || s.status === 'started')) {
      s.players = s.players.filter((p) => p !== seat)
      this.changes++
    } else if (kind === 'match.start' && live && s.players.length > 0) {
      s.status = 'started'
      this.changes++
      return
    } else if (kind === 'match.finish' && s.status === 'started') {
      s.status = 'finished'
      this.changes++
      return
    } else if (kind === 'match.abort' && (live || s.status === 'started')) {
      s.status = 'aborted'
      this.changes++
      return
    }
    if (s.status === 'open' || s.status === 'full') s.status = s.players.length >= MAX_PLAYERS ? 'full' : 'open'
  }
}

/**
 * Four matches (`match:soak-m0..3`, 3 seats, 5 players each) created before traffic. Per match a
 * lane makes its players, as themselves over REST, join, ready up and leave in turn (a join while
 * full is refused), each event sent after the previous was acknowledged, so the stream's order is
 * the oracle's; after the run match 0 is started and finished, match 1 started, match 2 aborted.
 * Oracle: each match's seats (in seating order, ready flags), status, and its channel's version
 * (one change per event that changed something, refusals included).
 */
export class MatchesArea implements SoakArea {
  readonly name = 'matches'
  readonly tally = new Tally()
  readonly channels = [
    ...Array.from({ length: MATCHES }, (_, m) => ({ channel: `match:${matchId(m)}`, subscribers: 1, view: (): ChannelView => new MatchChannelView() })),
    // Each match's first player follows their own channel, where the decisions on their joins arrive.
    ...Array.from({ length: MATCHES }, (_, m) => ({ channel: `user:${playerId(m, 0)}`, subscribers: 1, view: (): ChannelView => new DecisionsView(), as: playerId(m, 0) })),
  ]
  private oracles = Array.from({ length: MATCHES }, () => new MatchOracle())
  /** Matches with a given-up event: their order is unknown, so their exact checks are skipped. */
  private unknown = new Set<number>()

  async prepare(ctx: SoakContext) {
    const created: SoakEvent[] = Array.from({ length: MATCHES }, (_, m) => ({ id: `${ctx.run}-${matchId(m)}`, type: 'match.created', data: { match: matchId(m), mode: 'soak', maxPlayers: MAX_PLAYERS } }))
    if (!(await sendUntilAcked(ctx.api.baseUrl, ctx.api.ingestToken, created, new Tally(), Date.now()))) throw new Error('match.created not acknowledged')
    for (let m = 0; m < MATCHES; m++) await settle(() => fetch(`${ctx.api.baseUrl}/v1/matches/${matchId(m)}`).then((r) => r.status), (s) => s === 200, 30_000)
  }

  async ingest(ctx: SoakContext, endAt: number) {
    await Promise.all(Array.from({ length: MATCHES }, (_, m) => this.lane(ctx, m, endAt)))
  }

  private async send(ctx: SoakContext, m: number, token: string, n: number, type: string, data: Record<string, unknown> = {}, player?: string) {
    if (this.unknown.has(m)) return
    const event = { id: `${ctx.run}-${matchId(m)}-${n}`, type, data: { match: matchId(m), ...data } }
    if (await sendUntilAcked(ctx.api.baseUrl, token, [event], this.tally, ctx.startedAt)) this.oracles[m].apply(type, player)
    else this.unknown.add(m)
  }

  private async lane(ctx: SoakContext, m: number, endAt: number) {
    const tokens = await Promise.all(Array.from({ length: PLAYERS }, (_, p) => ctx.userToken(playerId(m, p))))
    const o = this.oracles[m]
    let n = 0
    for (let step = 0; Date.now() < endAt; step++) {
      const p = (step * 3 + m) % PLAYERS
      const player = playerId(m, p)
      const seat = o.seats.players.find((s) => s.player === player)
      const type = !seat ? 'match.join' : !seat.ready ? 'match.ready' : 'match.leave'
      await this.send(ctx, m, tokens[p], n++, type, {}, player)
      await Bun.sleep(PAUSE_MS)
    }
    const key = ctx.api.ingestToken
    // A start of a match nobody is seated in is refused (a dead letter), and so is a finish of one not started.
    if (m <= 1 && o.seats.players.length > 0) await this.send(ctx, m, key, n++, 'match.start')
    if (m === 0 && o.seats.status === 'started') await this.send(ctx, m, key, n++, 'match.finish', { results: o.seats.players.map((s, i) => ({ player: s.player, score: 10 - i })) })
    if (m === 2) await this.send(ctx, m, key, n++, 'match.abort')
  }

  async check(ctx: SoakContext, subs: Subscriber[]): Promise<Verdict> {
    const { broken, notes } = tallyFindings(this.name, this.tally)
    const summary = [`matches: ${this.tally.line()}`]
    for (let m = 0; m < MATCHES; m++) {
      const id = matchId(m)
      const o = this.oracles[m]
      const exact = !this.unknown.has(m)
      const version = await settle(() => channelVersion(ctx.sql, `match:${id}`), (v) => v >= o.changes, 60_000)
      const mine = subs.filter((s) => s.channel === `match:${id}`)
      await untilAt(mine, version)
      const rows = await ctx.sql`SELECT status, players FROM matches WHERE match = ${id}`
      const db = seatsOf(rows[0])
      const res = await fetch(`${ctx.api.baseUrl}/v1/matches/${id}`)
      const rest = res.status === 200 ? seatsOf(await res.json()) : undefined
      if (exact) {
        if (version < o.changes) broken.push(`matches: ${id}: acknowledged changes lost: channel version ${version} < ${o.changes}`)
        if (version > o.changes) broken.push(`matches: ${id}: changes applied twice: channel version ${version} > ${o.changes}`)
        if (show(db) !== show(o.seats)) broken.push(`matches: ${id}: read model ${show(db)} != acknowledged ${show(o.seats)}`)
      }
      if (show(rest) !== show(db)) broken.push(`matches: ${id}: REST ${show(rest)} != read model ${show(db)}`)
      for (const s of mine) {
        const f = s.findings(version)
        broken.push(...f.broken)
        notes.push(...f.notes)
        const view = (s.view as MatchChannelView).seats
        if (show(view) !== show(rest)) broken.push(`${s.name}: view ${show(view)} != REST ${show(rest)}`)
      }
      const player = playerId(m, 0)
      const decided = o.decisions.get(player) ?? []
      const own = subs.filter((s) => s.channel === `user:${player}`)
      const userVersion = await settle(() => channelVersion(ctx.sql, `user:${player}`), (v) => v >= decided.length, 30_000)
      await untilAt(own, userVersion)
      if (exact && userVersion !== decided.length) broken.push(`matches: user:${player}: version ${userVersion}, ${decided.length} join decisions acknowledged`)
      for (const s of own) {
        const f = s.findings(userVersion)
        broken.push(...f.broken)
        notes.push(...f.notes)
        const seen = (s.view as DecisionsView).decisions
        if (exact && seen.join() !== decided.slice(decided.length - seen.length).join()) broken.push(`${s.name}: decisions ${seen.join(' ')} != acknowledged joins' ${decided.join(' ')}`)
      }
      summary.push(`matches: ${id}: version ${version}, ${o.accepted} joins seated, ${o.rejected} refused, ${show(db)}${exact ? '' : ' (an event given up: not checked exactly)'}`)
    }
    return { broken, notes, summary: [...summary, ...subs.map((s) => s.line())] }
  }
}
