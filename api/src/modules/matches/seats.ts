import { and, asc, eq, gt, gte, inArray, isNotNull, lte, or, sql } from 'drizzle-orm'
import { every } from '../../../../core/backoff'
import { channelOf, parseChannel, type ChangeNotice, type MatchChange } from '../../../../core/channels'
import type { Db } from '../../../../core/db/client'
import { matches } from '../../../../core/db/schema'
import type { EventInput } from '../../../../core/events'
import type { Logger } from '../../../../core/logger'
import type { Seat } from '../../../../core/matches'
import { rootKey } from '../../auth/principal'
import { revokedUser, type Revocation, type Revocations } from '../../auth/revocations'
import type { Presence } from '../../presence'
import type { PresenceChange } from '../../presence/view'
import type { NoticeListener } from '../../realtime/start'
import type { Ingest } from '../events/service'
import { createSeatBook } from './seat-book'
import { readSeats } from './service'

export type SeatWatcher = { stop: () => Promise<void> }

/** Rows the grace sweep reads a round, of each of its two reads. */
const SWEEP_PAGE = 500
/** Matches the seat book reads in one statement (on first use). */
const LOOKUP_PAGE = 500
/** How long the sweep trusts an event this node published to be on its way to the projection. */
const RECENT_MS = 10_000
/** How long a seated player shown connected must be absent from the match's channel, on every node, before the sweep publishes their disconnect. */
const ABSENT_MS = 10_000
/** How long the sweep remembers a seat it saw absent but has not seen again (its match left the live set, or a round of pages takes longer). */
const ABSENT_KEPT_MS = 600_000
/** How long a revocation the seat watcher acted on is remembered, so that hearing it again does nothing. */
const HEARD_MS = 60_000

/**
 * What tells one revocation from another: the same revocation announced by this node and broadcast
 * back has the same key; a user revoked again (a later cut-off), or another token, has another.
 */
const revocationKey = (r: Revocation): string =>
  r.kind === 'user' ? `user\u0000${r.user}\u0000${r.before}` : r.kind === 'token' ? `token\u0000${r.user ?? ''}\u0000${r.jti}\u0000${r.exp}` : `key\u0000${r.id}`

/**
 * Tells the matches projection, through the event stream, what presence sees of players'
 * connections, and ends the graces that ran out. The decisions stay the projection's (see
 * core/matches.ts and docs/design.md "Match seats and disconnects"):
 *
 * - When the cluster-wide presence of `match:<id>` loses a user (no connection on any node, after
 *   FANFARE_PRESENCE_GRACE_MS of a page reload), one node publishes `match.player.connection
 *   { connected: false, graceMs }`; when it gains one, `{ connected: true }`. A user who left because
 *   their credential was revoked (presence's reason `revoked`, at once) gets `match.leave { player,
 *   reason: "revoked" }` instead: the seat goes at once, not after a grace for a reconnect. The projection ignores
 *   them for anyone who holds no seat (spectators), and repeats change nothing, so two nodes that
 *   both believe themselves the one (a handover) only repeat an event. Changes that can never
 *   matter are not published: of a match that is over, or of a started match by a user who holds
 *   none of its seats (a spectator: nobody is seated after the start). The node knows both from
 *   the match change feed it follows anyway (a seat book, see seat-book.ts), and for a match the
 *   book does not know yet (created before this node started, forgotten after a feed resync) from
 *   one read of that match's row on its first presence change, decided after it (later changes
 *   wait behind it, in order). Nothing is read at start or resync, however many matches are live.
 *   Spectators of open or full matches are still published: their join may be on its way to the
 *   projection. A match id with no row (read when its change is decided, and no notice of it since)
 *   publishes nothing, connects and disconnects alike, and is not read again for its next changes
 *   until a notice of it, a feed resync, or 30 s (the book remembers the last 10,000 such ids): otherwise subscribing to `match:<random id>`
 *   and unsubscribing, in a loop, appended two events to the event stream per subscribe. No connect
 *   is then ever published before the match's row exists, so no disconnect dropped this way can
 *   leave a seat connected: a seat starts not yet connected (given up after the join grace unless
 *   the player connects); when the feed shows a join of a user who is already present in the
 *   match's channel (they subscribed first, so their presence change came before their seat, or
 *   before the match), the node publishes their `{ connected: true }` then, as the sweep does for
 *   present players whose grace runs; a later disconnect finds the row (rows are never deleted).
 * - Every `sweepMs`, the same node reads a page (500) of the matches whose grace has ended
 *   (`grace_until`, an index; earliest end first, each round from where the last one stopped, back
 *   to the earliest after the last) and publishes `match.leave { player, reason: "disconnected" }`
 *   for each player whose grace has ended: the event after the grace end at which the projection
 *   gives the seat up. One that arrives early, or after a reconnect, changes nothing. A backlog
 *   larger than a page (many lobbies at once, a projection behind) drains a page a round, whatever
 *   the projection has applied yet. A player whose grace still runs but who is present in the
 *   match's channel gets the `{ connected: true }` no designated node published (a join or
 *   reconnect during a warm-up or a handover, a join notice lost in a feed resync): the sweep also
 *   reads the seats of up to 500 matches a round whose channel has someone present (presence's
 *   channels, in turn), so present players keep their seats however many graces run.
 * - A seat shown connected whose player no node holds present: nobody saw that player's last
 *   connection close, because no node that held it lived on (the only API node, or every one, was
 *   killed and started again; a presence leave lost before any node was designated). Presence
 *   then never reports a leave, and the seat would stay connected for good, keeping the lobby from
 *   filling. The same sweep reads a page (500) a round of the live matches (open, then full, then
 *   started ones, in turn), and publishes `match.player.connection { connected: false,
 *   graceMs }` for each such player absent from the match's channel on every round that saw them
 *   for `absentMs` (10 s: longer than a leave published from presence takes to be applied, so
 *   that one is not repeated). The grace then runs as after any disconnect: a player who comes
 *   back within it keeps the seat (a wrong disconnect is mended like a missed connect, above).
 * - A revocation naming a user (`POST /admin/users/revoke`, or a token revoked by jti with its
 *   `user`), broadcast to every node: the same node reads the matches whose grace runs and
 *   publishes `match.leave { player, reason: "revoked" }` for each seat of that user that waits
 *   for a reconnect (disconnected, or joined and never connected). Their sockets were closed
 *   before, so presence has no `revoked` leave to report, and the seat would otherwise be held for
 *   a reconnect the credential can no longer make, until the grace ends.
 *
 * The one node is the lowest id among this node and the peers its presence hears from (as for the
 * viewer sampler), after `warmupMs` (a new node's view is still filling). Events are published as
 * the API nodes' own principal (`system`).
 */
export function startSeatWatcher(deps: {
  presence: Pick<Presence, 'node' | 'peers' | 'onChange' | 'isPresent' | 'channels'>
  /** Follows the match change feed (Realtime.onNotices('match', ...)). */
  notices: (listener: NoticeListener) => () => void
  ingest: Pick<Ingest, 'publish'>
  db: Db
  graceMs: number
  logger: Logger
  /**
   * FANFARE_PRESENCE_TTL_MS: how long a dead designated node may still be heard of (its peers keep
   * it for this long), so how long back this node keeps the leaves it saw while not designated.
   */
  presenceTtlMs?: number
  /** The node's revocations (each announced or broadcast one is told): seats in grace of a revoked user end at once. */
  revocations?: Pick<Revocations, 'onChange'>
  sweepMs?: number
  warmupMs?: number
  /** How long a connected seat's player must be absent before the sweep disconnects them (ABSENT_MS). */
  absentMs?: number
}): SeatWatcher {
  const log = deps.logger.child({ component: 'seat-watcher' })
  const startedAt = Date.now()
  const warmupMs = deps.warmupMs ?? 3000
  const system = rootKey('system')
  const idPrefix = `${deps.presence.node.replace(/[^A-Za-z0-9_.@-]/g, '_').slice(0, 64)}:`
  const designated = () => Date.now() - startedAt >= warmupMs && [deps.presence.node, ...deps.presence.peers()].sort()[0] === deps.presence.node
  const id = () => `${idPrefix}${Bun.randomUUIDv7()}`
  let stopped = false
  let pending: Promise<unknown> = Promise.resolve()

  /**
   * Connects published from presence (`match\0player` -> when): until the projection applies one,
   * the seat still waits for a connect, and the sweep, seeing the player present, would publish it
   * again. Forgotten after RECENT_MS, or at once when the publish failed (the sweep's to make then).
   */
  const connects = new Map<string, number>()
  const seatKey = (match: string, player: string) => `${match}\u0000${player}`
  const connectOnItsWay = (match: string, player: string, now: number) => now - (connects.get(seatKey(match, player)) ?? -Infinity) < RECENT_MS

  const publish = (events: EventInput[]) => {
    const marks = events.flatMap((e) => {
      const d = e.data as { match: string; player: string; connected?: boolean }
      return d.connected === true ? [seatKey(d.match, d.player)] : []
    })
    for (const k of marks) connects.set(k, Date.now())
    pending = Promise.all([
      pending,
      deps.ingest.publish(events, system).catch((err) => {
        for (const k of marks) connects.delete(k)
        log.warn({ err, events: events.length }, 'match connection events not published')
      }),
    ])
  }

  const book = createSeatBook()
  /**
   * A seat starts not yet connected (the join grace). A player already present in `match:<id>`
   * when their join is decided made their presence change before holding the seat (so it changed
   * nothing): their first connect is published now, after the join.
   */
  const joined = (n: ChangeNotice) => {
    const c = n.data as MatchChange
    if (stopped || c.kind !== 'joined' || !designated() || !deps.presence.isPresent(n.channel, c.player)) return
    const parsed = parseChannel(n.channel)
    if (parsed?.kind !== 'match') return
    publish([{ id: id(), type: 'match.player.connection', data: { match: parsed.name, player: c.player, connected: true } }])
  }
  /**
   * Notices of the matches being read, given to the book once the read is in it: the book drops
   * notices of a match it does not know, and one committed after the read's snapshot would be lost.
   */
  const reading = new Map<string, ChangeNotice[]>()
  const offNotices = deps.notices({
    notice: (n) => {
      book.notice(n)
      if (n.channel.startsWith('match:')) reading.get(n.channel.slice(6))?.push(n)
      joined(n)
    },
    resync: () => book.resync(),
  })
  /** Reads matches into the book (those with no row as absent), with the notices that came during the read. */
  const fill = async (ids: string[]) => {
    for (const m of ids) reading.set(m, [])
    try {
      // A row older than what a resync lost is caught like any gap: by the version of the match's next notice.
      const rows = await readSeats(deps.db, ids)
      book.load(rows)
      const found = new Set(rows.map((r) => r.match))
      book.absent(ids.filter((m) => !found.has(m)))
      // After: a creation notice that came during the read makes its match known again.
      for (const m of ids) for (const n of reading.get(m) ?? []) book.notice(n)
    } finally {
      for (const m of ids) reading.delete(m)
    }
  }

  /** `revoked`: the user left because their credential was revoked (presence's reason), not a flaky network. */
  type Change = { match: string; user: string; connected: boolean; revoked?: boolean }
  const decide = (c: Change) => {
    // A match with no row (a read found none, and no notice has shown since): nothing to tell.
    if (book.irrelevant(c.match, c.user) || book.missing(c.match)) return
    // A revoked player has nothing to reconnect with: the seat goes at once, and the match's
    // players are told why (as presence tells `revoked`), instead of a grace for a reconnect.
    if (c.revoked) return publish([{ id: id(), type: 'match.leave', data: { match: c.match, player: c.user, reason: 'revoked' } }])
    publish([{ id: id(), type: 'match.player.connection', data: { match: c.match, player: c.user, connected: c.connected, ...(c.connected ? {} : { graceMs: deps.graceMs }) } }])
  }
  /**
   * Changes waiting for the book to read their matches (first use, or unsure), in presence's
   * order: a change is decided only after every earlier one, so a user's join and leave are
   * published in the order they happened.
   */
  const queue: Change[] = []
  let draining = false
  let drained: Promise<void> = Promise.resolve()
  async function drain() {
    draining = true
    // No await between the loop's last check and `draining = false`: a change queued meanwhile is not left behind.
    try {
      while (queue.length > 0) {
        const batch = queue.splice(0)
        const wanted = [...new Set(batch.map((c) => c.match))].filter(book.wants)
        for (let i = 0; i < wanted.length && !stopped; i += LOOKUP_PAGE) {
          try {
            await fill(wanted.slice(i, i + LOOKUP_PAGE))
          } catch (err) {
            // Decided with what the book knows: an unknown match's changes are all published.
            log.warn({ err, matches: wanted.length }, 'could not read the seats of matches; their connection changes are published')
            break
          }
        }
        for (const c of batch) decide(c)
      }
    } finally {
      draining = false
    }
  }
  const route = (c: Change) => {
    if (!draining && !book.wants(c.match)) return decide(c)
    queue.push(c)
    if (!draining) drained = drain()
  }

  /**
   * Leaves of `match:` channels this node saw while it was not the designated node (`match\0player`
   * -> the change and when). The designated node may be dead and still counted as a peer (until
   * the presence TTL drops it) or warming up: then nobody publishes the disconnect, the seat stays
   * connected forever, and the sweep cannot tell (it repairs missing connects, not disconnects).
   * Once this node is designated it publishes those of players still absent; a leave the other
   * node did publish is only repeated, which changes nothing. Joins are not kept: a connect
   * nobody published is the sweep's, which finds the present player's seat waiting for one.
   */
  const missed = new Map<string, { change: Change; at: number }>()
  const missedMs = (deps.presenceTtlMs ?? 10_000) + warmupMs + 5_000
  const replayMissed = () => {
    const now = Date.now()
    for (const [k, m] of missed) {
      missed.delete(k)
      if (now - m.at > missedMs) continue
      if (deps.presence.isPresent(channelOf.match(m.change.match), m.change.user)) continue
      route(m.change)
    }
  }

  const off = deps.presence.onChange((change: PresenceChange) => {
    // A renamed user stays as connected as they were.
    if (stopped || change.kind === 'count' || change.kind === 'update') return
    const parsed = parseChannel(change.channel)
    if (parsed?.kind !== 'match') return
    const c: Change = { match: parsed.name, user: change.user, connected: change.kind === 'join', ...(change.kind === 'leave' && change.reason === 'revoked' ? { revoked: true } : {}) }
    if (!designated()) {
      const k = seatKey(c.match, c.user)
      missed.delete(k)
      if (!c.connected) missed.set(k, { change: c, at: Date.now() })
      // Oldest first (each is re-inserted when it changes): a node never designated keeps only the last missedMs.
      for (const [old, m] of missed) {
        if (Date.now() - m.at <= missedMs) break
        missed.delete(old)
      }
      return
    }
    replayMissed()
    route(c)
  })

  /** Graces this node already ended (or connects it already published), so that it does not publish them again each round while the projection catches up. */
  const ended = new Map<string, number>()
  /**
   * Where the sweep of due graces goes on next round: (grace_until, match) of the last row read.
   * Rows already swept stay due until the projection applies their leaves (it lags, or their
   * partition's worker is down); reading from the earliest each round would read those again and
   * never reach the rest. Back to the start once a round reads the last due row.
   */
  let dueAfter: { at: Date; match: string } | undefined
  /** The last `match:` channel with someone present whose seats the sweep read (the present players' round robin). */
  let presentAfter = ''
  const consider = (rows: { match: string; players: Seat[] }[], now: number, events: EventInput[]) => {
    // A row read here exists: if the book still holds it as missing (its creation's notice is late),
    // a disconnect of a player the sweep connects would be dropped.
    book.exist(rows.map((r) => r.match))
    for (const r of rows) {
      for (const p of r.players) {
        if (p.graceUntil === null || p.connected) continue
        const key = `${r.match}\u0000${p.player}\u0000${p.graceUntil}`
        if (ended.has(key)) continue
        if (p.graceUntil <= now) {
          ended.set(key, now)
          events.push({ id: id(), type: 'match.leave', data: { match: r.match, player: p.player, reason: 'disconnected' } })
        } else if (!connectOnItsWay(r.match, p.player, now) && deps.presence.isPresent(channelOf.match(r.match), p.player)) {
          // Present, yet the seat waits for a connect: one this node never published (made while
          // no node was designated, or a join notice a feed resync dropped; one published from
          // presence a moment ago is on its way). Published now, within the grace.
          ended.set(key, now)
          events.push({ id: id(), type: 'match.player.connection', data: { match: r.match, player: p.player, connected: true } })
        }
      }
    }
  }
  /** Connected seats whose player the sweep saw absent (`match\0player` -> first and last round seen so). */
  const absent = new Map<string, { since: number; seen: number }>()
  /**
   * Where the walk of live matches goes on: a status and the (created_seq, match) of the last row
   * read in it. One page of one status a round, in index order (matches_by_status_seq), whatever
   * its seats: a bounded read however many lobbies are open (100,000 empty ones a buggy game server
   * left are a page a round, not a scan of all of them every second).
   */
  const LIVE = ['open', 'full', 'started'] as const
  let liveAt: { status: (typeof LIVE)[number]; after?: { seq: number; match: string } } = { status: 'open' }
  const absentMs = deps.absentMs ?? ABSENT_MS
  const considerConnected = (rows: { match: string; players: Seat[] }[], now: number, events: EventInput[]) => {
    for (const r of rows) {
      const channel = channelOf.match(r.match)
      for (const p of r.players) {
        const key = seatKey(r.match, p.player)
        // One lookup per seat, whatever the spectators (the channel's whole user list was copied
        // and scanned per seat: O(spectators x seats) a match a round).
        if (!p.connected || deps.presence.isPresent(channel, p.player)) {
          absent.delete(key)
          continue
        }
        const was = absent.get(key)
        if (!was) {
          absent.set(key, { since: now, seen: now })
          continue
        }
        if (now - was.since < absentMs) {
          was.seen = now
          continue
        }
        // Seen absent again on the next visit: published once; if it is not applied (or the publish
        // failed), the seat is still connected on a later visit and counts from there again.
        absent.delete(key)
        events.push({ id: id(), type: 'match.player.connection', data: { match: r.match, player: p.player, connected: false, graceMs: deps.graceMs } })
      }
    }
    for (const [k, a] of absent) if (now - a.seen > ABSENT_KEPT_MS) absent.delete(k)
  }
  async function sweep() {
    if (!designated()) return
    const now = Date.now()
    for (const [k, at] of ended) if (now - at > RECENT_MS) ended.delete(k)
    for (const [k, at] of connects) if (now - at > RECENT_MS) connects.delete(k)
    const events: EventInput[] = []
    // Due graces, earliest end first (the partial index), a page a round from where the last round stopped.
    const due = await deps.db
      .select({ match: matches.match, players: matches.players, graceUntil: matches.graceUntil })
      .from(matches)
      .where(
        and(
          isNotNull(matches.graceUntil),
          lte(matches.graceUntil, new Date(now)),
          dueAfter && and(gte(matches.graceUntil, dueAfter.at), or(gt(matches.graceUntil, dueAfter.at), and(eq(matches.graceUntil, dueAfter.at), gt(matches.match, dueAfter.match)))),
        ),
      )
      .orderBy(asc(matches.graceUntil), asc(matches.match))
      .limit(SWEEP_PAGE)
    const last = due.at(-1)
    dueAfter = due.length === SWEEP_PAGE && last ? { at: last.graceUntil!, match: last.match } : undefined
    consider(due, now, events)
    // Graces still running of players present in the match's channel (their connect may be
    // missing): read by the channels presence holds, not by grace order, so that however many
    // graces run or are due, a present player is reached within a few rounds.
    const present = deps.presence
      .channels()
      .flatMap((ch) => (ch.startsWith('match:') && ch.slice(6) > presentAfter ? [ch.slice(6)] : []))
      .sort()
      .slice(0, SWEEP_PAGE)
    presentAfter = present.length === SWEEP_PAGE ? present.at(-1)! : ''
    if (present.length > 0) {
      const running = await deps.db
        .select({ match: matches.match, players: matches.players })
        .from(matches)
        .where(and(inArray(matches.match, present), gt(matches.graceUntil, new Date(now))))
      consider(running, now, events)
    }
    // Live matches, a page a round (see liveAt): seats shown connected whose player is present on no node.
    const { status, after } = liveAt
    const live = await deps.db
      .select({ match: matches.match, players: matches.players, createdSeq: matches.createdSeq })
      .from(matches)
      // The gte bounds the index range (the OR alone is a filter over every row of the status before it).
      .where(
        and(
          eq(matches.status, status),
          after && and(gte(matches.createdSeq, after.seq), or(gt(matches.createdSeq, after.seq), and(eq(matches.createdSeq, after.seq), gt(matches.match, after.match)))),
        ),
      )
      .orderBy(asc(matches.createdSeq), asc(matches.match))
      .limit(SWEEP_PAGE)
    const lastLive = live.at(-1)
    liveAt =
      live.length === SWEEP_PAGE && lastLive
        ? { status, after: { seq: lastLive.createdSeq, match: lastLive.match } }
        : { status: LIVE[(LIVE.indexOf(status) + 1) % LIVE.length] }
    considerConnected(live, now, events)
    for (let i = 0; i < events.length; i += 100) await deps.ingest.publish(events.slice(i, i + 100), system)
  }

  const revoked = async (user: string) => {
    // Matches with a grace running (the partial index), of which `user` holds a seat.
    const rows = await deps.db
      .select({ match: matches.match, players: matches.players })
      .from(matches)
      .where(and(isNotNull(matches.graceUntil), sql`${matches.players} @> ${JSON.stringify([{ player: user }])}::jsonb`))
    const events: EventInput[] = rows.flatMap((r) =>
      r.players.some((p) => p.player === user && !p.connected && p.graceUntil !== null) ? [{ id: id(), type: 'match.leave', data: { match: r.match, player: user, reason: 'revoked' } }] : [],
    )
    if (events.length > 0) await deps.ingest.publish(events, system)
  }
  /**
   * Revocations acted on (see revocationKey) -> when. A node hears its own twice: as it announces
   * it, and as its broadcast comes back, which may be after the seats were read and their leaves
   * published, and before the projection applied them: read again, the seats still wait in their
   * grace, and each would get a second `match.leave`. Kept for HEARD_MS, far longer than a broadcast takes.
   */
  const heard = new Map<string, number>()
  deps.revocations?.onChange((r) => {
    const user = r && revokedUser(r)
    if (stopped || user === undefined || !designated()) return
    const now = Date.now()
    for (const [k, at] of heard) if (now - at > HEARD_MS) heard.delete(k)
    const key = revocationKey(r!)
    if (heard.has(key)) return
    heard.set(key, now)
    pending = Promise.all([pending, revoked(user).catch((err) => log.warn({ err, user }, 'seats in grace of a revoked user not ended; they end with their grace'))])
  })

  const sweepMs = deps.sweepMs ?? 1000
  const rounds = every(
    sweepMs,
    async () => {
      if (missed.size > 0 && designated()) replayMissed()
      await sweep()
    },
    (err) => log.warn({ err }, 'grace sweep failed; trying again next round'),
  )

  return {
    stop: async () => {
      stopped = true
      off()
      offNotices()
      const roundDone = rounds.stop()
      await drained
      await roundDone
      await pending
    },
  }
}
