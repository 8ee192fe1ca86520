import type { ChangeNotice, MatchChange, MatchStatus } from '../../../../core/channels'
import { addNewest, putNewest } from '../../../../core/newest'

/** A match as read from the read model with its channel's version (SeatBook.load), whatever its status. */
export type SeatRow = { match: string; status: MatchStatus; players: string[]; version: number; epoch: string }

export type SeatBook = {
  /** A notice of any channel of the match change stream (`match:<id>` ones are used), in the feed's order. */
  notice: (n: ChangeNotice) => void
  /** The feed may have missed notices: what the book knows is kept only where it cannot be wrong. */
  resync: () => void
  /** Matches read from the read model (on first use, see `wants`), each with its channel's version then. */
  load: (rows: SeatRow[]) => void
  /**
   * Matches a read found no row of (rows are never deleted: they do not exist yet). Until a notice
   * of one (its creation), a resync (which may have lost that notice) or `missingMs`, the book
   * answers `missing` and does not want it read again.
   */
  absent: (matches: string[]) => void
  /** True when a read found no row of `match` lately and nothing has been heard of it since. */
  missing: (match: string) => boolean
  /** Rows of these matches were read elsewhere (the grace sweep): they exist, whatever `absent` was told. */
  exist: (matches: string[]) => void
  /**
   * True when a read of `match` could let the book answer `irrelevant` with more certainty: it
   * neither knows the match as over nor holds a sure entry of it (never heard of, forgotten, or
   * made unsure by a gap), nor knows it to have no row (`missing`).
   */
  wants: (match: string) => boolean
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
 * "not among them" stays true. A resync forgets every entry but the started ones (a read on next
 * use is sure again). Ended matches are remembered (the last `maxEnded`), without seats; live ones
 * up to `maxLive` (the least recently created or read forgotten first: a forgotten match is read
 * again on its next use).
 * The book is filled by notices and by reads of the matches presence changes are about, never by
 * reading every live match: a node's start or resync costs nothing however many there are. Ids a
 * read found no row of are remembered too (the last `maxMissing`, for `missingMs` each): a player
 * in the channel of a match not created yet, or a client looping over made-up ids, costs one read
 * per id, not one per presence change.
 */
export function createSeatBook(opts: { maxEnded?: number; maxLive?: number; maxMissing?: number; missingMs?: number; now?: () => number } = {}): SeatBook {
  const maxEnded = opts.maxEnded ?? 10_000
  const maxLive = opts.maxLive ?? 10_000
  const maxMissing = opts.maxMissing ?? 10_000
  const missingMs = opts.missingMs ?? 30_000
  const now = opts.now ?? Date.now
  const live = new Map<string, Entry>()
  const ended = new Set<string>()
  /** match -> until when it is known to have no row. */
  const absent = new Map<string, number>()
  const isMissing = (match: string) => {
    const until = absent.get(match)
    if (until === undefined) return false
    if (now() < until) return true
    absent.delete(match)
    return false
  }
  const put = (match: string, e: Entry) => putNewest(live, match, e, maxLive)

  const end = (match: string) => {
    live.delete(match)
    addNewest(ended, match, maxEnded)
  }
  /** A gap: only a started match's seats remain a safe answer. */
  const doubt = (e: Entry) => {
    if (e.status !== 'started') e.sure = false
  }

  return {
    notice(n) {
      if (!n.channel.startsWith('match:')) return
      const match = n.channel.slice(6)
      // Heard of: it has a row now (or soon), whatever a read found before.
      absent.delete(match)
      const c = n.data as MatchChange
      // Every change names the status after it; an ended match never lives again.
      if (over(c.status)) return end(match)
      if (ended.has(match)) return
      const e = live.get(match)
      if (c.kind === 'created') {
        if (!e || e.epoch !== n.epoch || n.version > e.version) {
          put(match, { status: c.status, seats: new Set(c.match.players.map((p) => p.player)), version: n.version, epoch: n.epoch, sure: true })
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
      // Only a started match's seats remain a safe answer; the others are read again on next use.
      for (const [match, e] of live) if (e.status !== 'started') live.delete(match)
      // A match's creation may be among the notices lost.
      absent.clear()
    },
    absent(matches) {
      for (const m of matches) putNewest(absent, m, now() + missingMs, maxMissing)
    },
    missing: isMissing,
    exist(matches) {
      for (const m of matches) absent.delete(m)
    },
    load(rows) {
      for (const r of rows) {
        absent.delete(r.match)
        if (over(r.status)) {
          end(r.match)
          continue
        }
        if (ended.has(r.match)) continue
        const e = live.get(r.match)
        // Notices newer than the read already moved the entry on (an unsure entry takes a read of its own version: that is what it missed).
        if (e && e.epoch === r.epoch && (e.version > r.version || (e.version === r.version && e.sure))) continue
        // Two histories (a rebuild between): which is newer is unknown, but a started match's seats
        // at any point are a superset of its seats from then on, so the row is safe to take then.
        if (e && e.epoch !== r.epoch && r.status !== 'started') {
          doubt(e)
          continue
        }
        put(r.match, { status: r.status, seats: new Set(r.players), version: r.version, epoch: r.epoch, sure: true })
      }
    },
    wants(match) {
      if (ended.has(match) || isMissing(match)) return false
      const e = live.get(match)
      return e === undefined || !e.sure
    },
    irrelevant(match, user) {
      if (ended.has(match)) return true
      const e = live.get(match)
      return e !== undefined && e.sure && e.status === 'started' && !e.seats.has(user)
    },
  }
}
