import { channelVersion, settle, type SoakArea, type SoakContext, type Verdict } from './area'
import { sendUntilAcked, Tally, tallyFindings } from './send'
import { untilAt, type ChannelView, type Subscriber } from './subscriber'

const POLL = 'soak'
const CHANNEL = `poll:${POLL}`
const OPTIONS = ['red', 'green', 'blue']
/** An option past the poll's: ignored, and does not use up the voter's vote. */
const PAST_OPTION = OPTIONS.length + 1
const VOTERS = 30
const PAUSE_MS = [300, 700]

type Tallies = { votes: number[]; ignoredVotes: number }
const show = (t: Tallies | undefined) => (t ? `votes ${t.votes.join('/')}, ignored ${t.ignoredVotes}` : 'no poll')
const same = (a: Tallies | undefined, b: Tallies | undefined) => show(a) === show(b)
const talliesOf = (poll: any): Tallies | undefined => (poll ? { votes: poll.options.map((o: { votes: number }) => o.votes), ignoredVotes: poll.ignoredVotes } : undefined)

/** A subscriber's poll: the whole poll after each batch of votes. Counted or ignored votes going down is a change out of order. */
export class PollChannelView implements ChannelView {
  tallies: Tallies | undefined
  snapshot(data: any) {
    this.tallies = talliesOf(data)
  }
  update(data: any) {
    const before = this.tallies
    this.tallies = talliesOf(data.poll)
    if (!before || !this.tallies) return undefined
    const down = this.tallies.ignoredVotes < before.ignoredVotes || this.tallies.votes.some((v, i) => v < before.votes[i])
    return down ? `tallies went down: ${show(before)} then ${show(this.tallies)}` : undefined
  }
}

/**
 * One poll (`poll:soak`, three options) opened before traffic; 30 users vote over REST as
 * themselves, each changing their vote every few hundred ms (one in four first votes for an option
 * past the poll's). By the README's rule a voter's first valid vote counts and every later one is
 * ignored, decided in the stream's order: a voter's next vote is sent only after the previous one
 * was acknowledged, so the oracle knows which counts. Oracle: the tallies of the first valid votes,
 * the ignored count of every other acknowledged vote, and each voter's counted option.
 */
export class PollsArea implements SoakArea {
  readonly name = 'polls'
  readonly tally = new Tally()
  readonly channels = [{ channel: CHANNEL, subscribers: 2, view: () => new PollChannelView() }]
  /** Each voter's acknowledged options, in order. */
  private votes = new Map<string, number[]>()

  async prepare(ctx: SoakContext) {
    const opened = { id: `${ctx.run}-poll`, type: 'poll.opened', data: { stream: 'soak', poll: POLL, question: 'Which colour?', options: OPTIONS } }
    const opener = new Tally()
    if (!(await sendUntilAcked(ctx.api.baseUrl, ctx.api.ingestToken, [opened], opener, Date.now()))) throw new Error('poll.opened not acknowledged')
    await settle(() => fetch(`${ctx.api.baseUrl}/v1/polls/${POLL}`).then((r) => r.status), (s) => s === 200, 30_000)
  }

  async ingest(ctx: SoakContext, endAt: number) {
    await Promise.all(Array.from({ length: VOTERS }, (_, v) => this.voter(ctx, v, endAt)))
  }

  private async voter(ctx: SoakContext, v: number, endAt: number) {
    const user = `voter${v}`
    const token = await ctx.userToken(user)
    const acked: number[] = []
    this.votes.set(`u:${user}`, acked)
    for (let k = 0; Date.now() < endAt; k++) {
      const option = k === 0 && v % 4 === 0 ? PAST_OPTION : (v + k) % OPTIONS.length
      const vote = { id: `${ctx.run}-v${v}-${k}`, type: 'poll.voted', data: { poll: POLL, option } }
      // A vote given up leaves the voter's order unknown: the voter stops (and the exact checks are skipped).
      if (!(await sendUntilAcked(ctx.api.baseUrl, token, [vote], this.tally, ctx.startedAt))) return
      acked.push(option)
      await Bun.sleep(PAUSE_MS[0] + Math.random() * (PAUSE_MS[1] - PAUSE_MS[0]))
    }
  }

  /** The tallies the acknowledged votes make, and each voter's counted option. */
  private oracle(): { tallies: Tallies; counted: Map<string, number> } {
    const counted = new Map<string, number>()
    let total = 0
    for (const [voter, options] of this.votes) {
      total += options.length
      const first = options.find((o) => o < OPTIONS.length)
      if (first !== undefined) counted.set(voter, first)
    }
    const votes = OPTIONS.map((_, i) => [...counted.values()].filter((o) => o === i).length)
    return { tallies: { votes, ignoredVotes: total - counted.size }, counted }
  }

  async check(ctx: SoakContext, subs: Subscriber[]): Promise<Verdict> {
    const { broken, notes } = tallyFindings(this.name, this.tally)
    const exact = this.tally.givenUp === 0
    const oracle = this.oracle()
    const readDb = async (): Promise<Tallies | undefined> => {
      const rows = await ctx.sql`SELECT votes, ignored_votes FROM polls WHERE poll = ${POLL}`
      return rows.length ? { votes: rows[0].votes as number[], ignoredVotes: Number(rows[0].ignored_votes) } : undefined
    }
    // Every acknowledged vote applied (or, with some given up, as many as were sent at most), then 2 s more: a vote applied twice shows late.
    const applied = (t: Tallies | undefined) => (t ? t.votes.reduce((a, b) => a + b, 0) + t.ignoredVotes : 0)
    await settle(readDb, (t) => applied(t) >= this.tally.acked, 60_000)
    await Bun.sleep(2000)
    const db = await readDb()
    const version = await channelVersion(ctx.sql, CHANNEL)
    await untilAt(subs, version)

    if (applied(db) < this.tally.acked) broken.push(`polls: acknowledged votes lost: ${applied(db)} applied (counted + ignored), ${this.tally.acked} acknowledged`)
    if (applied(db) > this.tally.acked + this.tally.givenUp) broken.push(`polls: votes applied twice: ${applied(db)} applied, ${this.tally.acked + this.tally.givenUp} sent`)
    if (exact && !same(db, oracle.tallies)) broken.push(`polls: read model (${show(db)}) != acknowledged votes (${show(oracle.tallies)})`)
    const rows = await ctx.sql`SELECT voter, option FROM poll_votes WHERE poll = ${POLL}`
    const counted = new Map(rows.map((r) => [r.voter as string, Number(r.option)]))
    const wrong = [...oracle.counted].filter(([voter, option]) => counted.get(voter) !== option)
    if (exact && (wrong.length > 0 || counted.size !== oracle.counted.size)) {
      broken.push(`polls: ${wrong.length} voters' counted vote is not their first valid one (${wrong.slice(0, 3).map(([v, o]) => `${v}: ${o}, counted ${counted.get(v)}`).join('; ')}); ${counted.size} counted, ${oracle.counted.size} expected`)
    }
    const res = await fetch(`${ctx.api.baseUrl}/v1/polls/${POLL}`)
    const rest = res.status === 200 ? talliesOf(await res.json()) : undefined
    if (!same(rest, db)) broken.push(`polls: REST poll (${show(rest)}) != read model (${show(db)})`)
    for (const s of subs) {
      const f = s.findings(version)
      broken.push(...f.broken)
      notes.push(...f.notes)
      const view = (s.view as PollChannelView).tallies
      if (!same(view, rest)) broken.push(`${s.name}: view (${show(view)}) != REST poll (${show(rest)})`)
    }
    return {
      broken,
      notes,
      summary: [`polls: votes ${this.tally.line()}`, `polls: read model version ${version}, ${show(db)}; oracle ${show(oracle.tallies)}`, ...subs.map((s) => s.line())],
    }
  }
}
