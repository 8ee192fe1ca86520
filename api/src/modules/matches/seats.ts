import { and, isNotNull, lte, sql } from 'drizzle-orm'
import { parseChannel } from '../../../../core/channels'
import type { Db } from '../../../../core/db/client'
import { matches } from '../../../../core/db/schema'
import type { EventInput } from '../../../../core/events'
import type { Logger } from '../../../../core/logger'
import { rootKey } from '../../auth/principal'
import type { Presence } from '../../presence'
import type { PresenceChange } from '../../presence/view'
import type { Ingest } from '../events/service'

export type SeatWatcher = { stop: () => Promise<void> }

/**
 * Tells the matches projection, through the event stream, what presence sees of players'
 * connections, and ends the graces that ran out. The decisions stay the projection's (see
 * core/matches.ts and docs/design.md "Match seats and disconnects"):
 *
 * - When the cluster-wide presence of `match:<id>` loses a user (no connection on any node, after
 *   FANFARE_PRESENCE_GRACE_MS of a page reload), one node publishes `match.player.connection
 *   { connected: false, graceMs }`; when it gains one, `{ connected: true }`. The projection ignores
 *   them for anyone who holds no seat (spectators), and repeats change nothing, so two nodes that
 *   both believe themselves the one (a handover) only repeat an event.
 * - Every `sweepMs`, the same node reads the matches whose earliest grace end has passed
 *   (`grace_until`, an index) and publishes `match.leave { player, reason: "disconnected" }` for
 *   each such player: the event after the grace end at which the projection gives the seat up. One
 *   that arrives early, or after a reconnect, changes nothing.
 *
 * The one node is the lowest id among this node and the peers its presence hears from (as for the
 * viewer sampler), after `warmupMs` (a new node's view is still filling). Events are published as
 * the API nodes' own principal (`system`).
 */
export function startSeatWatcher(deps: {
  presence: Pick<Presence, 'node' | 'peers' | 'onChange'>
  ingest: Pick<Ingest, 'publish'>
  db: Db
  graceMs: number
  logger: Logger
  sweepMs?: number
  warmupMs?: number
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

  const publish = (events: EventInput[]) => {
    pending = Promise.all([pending, deps.ingest.publish(events, system).catch((err) => log.warn({ err, events: events.length }, 'match connection events not published'))])
  }

  const off = deps.presence.onChange((change: PresenceChange) => {
    if (stopped || change.kind === 'count' || !designated()) return
    const parsed = parseChannel(change.channel)
    if (parsed?.kind !== 'match') return
    const connected = change.kind === 'join'
    publish([{ id: id(), type: 'match.player.connection', data: { match: parsed.name, player: change.user, connected, ...(connected ? {} : { graceMs: deps.graceMs }) } }])
  })

  /** Graces this node already ended, so that it does not publish them again each round while the projection catches up. */
  const ended = new Map<string, number>()
  async function sweep() {
    if (!designated()) return
    const now = Date.now()
    for (const [k, at] of ended) if (now - at > 10_000) ended.delete(k)
    const rows = await deps.db
      .select({ match: matches.match, players: matches.players })
      .from(matches)
      .where(and(isNotNull(matches.graceUntil), lte(matches.graceUntil, sql`now()`)))
      .limit(500)
    const events: EventInput[] = []
    for (const r of rows) {
      for (const p of r.players) {
        if (p.graceUntil === null || p.graceUntil > now) continue
        const key = `${r.match}\u0000${p.player}\u0000${p.graceUntil}`
        if (ended.has(key)) continue
        ended.set(key, now)
        events.push({ id: id(), type: 'match.leave', data: { match: r.match, player: p.player, reason: 'disconnected' } })
      }
    }
    for (let i = 0; i < events.length; i += 100) await deps.ingest.publish(events.slice(i, i + 100), system)
  }

  const sweepMs = deps.sweepMs ?? 1000
  let timer: ReturnType<typeof setTimeout> | undefined
  let running: Promise<void> = Promise.resolve()
  const tick = () => {
    if (stopped) return
    running = sweep()
      .catch((err) => log.warn({ err }, 'grace sweep failed; trying again next round'))
      .finally(() => {
        if (!stopped) timer = setTimeout(tick, sweepMs)
      })
  }
  timer = setTimeout(tick, sweepMs)

  return {
    stop: async () => {
      stopped = true
      off()
      clearTimeout(timer)
      await running
      await pending
    },
  }
}
