import type { ChangeNotice, MatchChange, MatchStatus } from '../../../../core/channels'

/** A live match as read from the read model with its channel's version (SeatBook.load). */
export type SeatRow = { match: string; status: MatchStatus; players: string[]; version: number; epoch: string }

export type SeatBook = {
  /** A notice of any channel of the match change stream (`match:<id>` ones are used), in the feed's order. */
  notice: (n: ChangeNotice) => void
  /** The feed may have missed notices: what the book knows is kept only where it cannot be wrong. */
  resync: () => void
  /** Live matches read at once (at start, after a resync), each with its channel's version then. */
  load: (rows: SeatRow[]) => void
  /**
   * True when a connection event for `user` in `match` can never change anything: the match is
   * over, or it started and `user` holds none of its seats (nobody is seated after the start).
   * False whenever the book is not sure, including every open or full match: a join of `user` may
   * be on its way (only the projection knows), and a disconnect dropped then would keep a seat
   * forever.
   */
  irrelevant: (match: string, user: string) => boolean
}

type Entry = { status: MatchStatus; seats: Set<string>; version: number; epoch: string; sure: boolean }

const over = (s: MatchStatus) => s === 'finished' || s === 'aborted'

/**
 * What an API node knows, from the change feed it follows anyway, of who holds a seat: enough for
 * the seat watcher to skip connection events of spectators of started matches and of anyone on
 * a match that is over, without a Postgres read per subscribe. Pure; fed by the seat watcher.
 *
 * A match's entry is sure while its notices arrive without a gap since its `created` notice or a
 * load; a gap or an epoch change (a rebuild) makes it unsure, except for a started match: its
 * seats only shrink from the start on, so the seats it holds stay a superset of the real ones, and
 * "not among them" stays true. Ended matches are remembered (the last `maxEnded`), without seats.
 */
export function createSeatBook(opts: { maxEnded?: number } = {}): SeatBook {
  const maxEnded = opts.maxEnded ?? 10_000
  const live = new Map<string, Entry>()
  const ended = new Set<string>()

  const end = (match: string) => {
    live.delete(match)
    ended.delete(match)
    ended.add(match)
    if (ended.size > maxEnded) ended.delete(ended.values().next().value!)
  }
  /** A gap: only a started match's seats remain a safe answer. */
  const doubt = (e: Entry) => {
    if (e.status !== 'started') e.sure = false
  }

  return {
    notice(n) {
      if (!n.channel.startsWith('match:')) return
      const match = n.channel.slice(6)
      const c = n.data as MatchChange
      // Every change names the status after it; an ended match never lives again.
      if (over(c.status)) return end(match)
      if (ended.has(match)) return
      const e = live.get(match)
      if (c.kind === 'created') {
        if (!e || e.epoch !== n.epoch || n.version > e.version) {
          live.set(match, { status: c.status, seats: new Set(c.match.players.map((p) => p.player)), version: n.version, epoch: n.epoch, sure: true })
        }
        return
      }
      if (!e) return
      if (e.epoch !== n.epoch) {
        doubt(e)
        e.epoch = n.epoch
      } else if (n.version <= e.version) return // already in the book (the feed looks back)
      else if (n.version !== e.version + 1) doubt(e)
      e.version = n.version
      e.status = c.status
      if (c.kind === 'joined') e.seats.add(c.player)
      else if (c.kind === 'left') e.seats.delete(c.player)
    },
    resync() {
      for (const e of live.values()) doubt(e)
    },
    load(rows) {
      for (const r of rows) {
        if (ended.has(r.match)) continue
        const e = live.get(r.match)
        // Notices newer than the read already moved the entry on.
        if (e && e.epoch === r.epoch && e.version >= r.version) continue
        // Two histories (a rebuild between): which is newer is unknown, but a started match's seats
        // at any point are a superset of its seats from then on, so the row is safe to take then.
        if (e && e.epoch !== r.epoch && r.status !== 'started') {
          doubt(e)
          continue
        }
        live.set(r.match, { status: r.status, seats: new Set(r.players), version: r.version, epoch: r.epoch, sure: true })
      }
    },
    irrelevant(match, user) {
      if (ended.has(match)) return true
      const e = live.get(match)
      return e !== undefined && e.sure && e.status === 'started' && !e.seats.has(user)
    },
  }
}
