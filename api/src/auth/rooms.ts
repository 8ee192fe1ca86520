import type { NatsConnection } from '@nats-io/transport-node'
import { eq, gt } from 'drizzle-orm'
import type { Db } from '../../../core/db/client'
import { roomSettings } from '../../../core/db/schema'
import { createSubscriptionWatch, type SubscriptionWatch } from '../../../core/nats-subscriptions'
import type { Logger } from '../../../core/logger'
import type { Visibility } from './permissions'

export type RoomAccess = {
  /** A room's visibility (public unless an admin made it private). Cached; changes reach every node at once. */
  visibility(room: string): Promise<Visibility>
  /**
   * The visibility this node holds for a room without asking Postgres, or a promise of it: the
   * same promise for every caller while one lookup is under way, so callers that were in order
   * resume in that order (publishes of one connection keep their order through it).
   */
  visibilityNowOr(room: string): Visibility | Promise<Visibility>
  /** Sets a room's visibility and tells every node. */
  setVisibility(room: string, visibility: Visibility): Promise<void>
  /** Called with a room whose visibility changed (here or on another node): re-check its subscribers. */
  onChange(listener: (room: string) => void): void
  stop(): void
}

/**
 * Room visibility, stored in Postgres (`room_settings`) and cached per API node. A change is
 * written, then broadcast on `<prefix>.control.rooms`: every node drops its cached value and
 * re-checks the room's subscribers (a room made private drops those who may not see it, with a
 * `forbidden` error frame). Cached values also expire after `ttlMs`, bounding what a node that
 * missed a broadcast can serve. While NATS denies the subscription (permissions narrowed by a
 * reload; the node is not ready meanwhile) changes are read from Postgres every second.
 */
export function createRoomAccess(deps: {
  db: Db
  nc: NatsConnection
  prefix: string
  logger: Logger
  /** The node's watched subscriptions; one of its own when absent. */
  subscriptions?: SubscriptionWatch
  /** How often it reads changed rooms from Postgres while NATS denies its subscription (default 1 s). */
  deniedPollEveryMs?: number
  ttlMs?: number
  now?: () => number
}): RoomAccess {
  const now = deps.now ?? Date.now
  const ttl = deps.ttlMs ?? 30_000
  const cache = new Map<string, { visibility: Visibility; at: number }>()
  // One lookup per room at a time: callers of a room being read share it. `stale`: a change came
  // in while it was under way.
  const reading = new Map<string, { promise: Promise<Visibility>; stale: boolean }>()
  const listeners: ((room: string) => void)[] = []
  const subject = `${deps.prefix}.control.rooms`
  const changed = (room: string) => {
    cache.delete(room)
    const under = reading.get(room)
    if (under) under.stale = true
    for (const l of listeners) l(room)
  }
  // While NATS denies the subscription the node hears no change: it reads the rooms changed since
  // (by `updated_at`) from Postgres every second instead, so a room made private still drops its
  // subscribers here within about a second. The margin covers clocks (a row's time is the writing
  // node's, or Postgres'); a room seen again is only re-checked.
  let polling: ReturnType<typeof setInterval> | undefined
  let since = new Date(0)
  const polled = new Map<string, number>()
  const poll = async () => {
    const rows = await deps.db.select({ room: roomSettings.room, updatedAt: roomSettings.updatedAt }).from(roomSettings).where(gt(roomSettings.updatedAt, since))
    for (const { room, updatedAt } of rows) {
      if (polled.get(room) === updatedAt.getTime()) continue
      polled.set(room, updatedAt.getTime())
      changed(room)
    }
  }
  const log = deps.logger.child({ component: 'rooms' })
  const subscriptions = deps.subscriptions ?? createSubscriptionWatch({ nc: deps.nc, logger: deps.logger })
  const sub = subscriptions.subscribe(subject, {
    name: 'rooms',
    onMessage: (msg) => changed(msg.string()),
    onDenied: () => {
      clearInterval(polling)
      since = new Date(now() - 60_000)
      polled.clear()
      polling = setInterval(() => void poll().catch((err) => log.warn({ err }, 'reading changed rooms failed; retrying')), deps.deniedPollEveryMs ?? 1_000)
    },
    // Changes broadcast while it was denied never came: what this node holds may be stale.
    onRestored: () => {
      clearInterval(polling)
      polling = undefined
      for (const room of [...cache.keys()]) changed(room)
    },
  })
  const read = async (room: string): Promise<Visibility> => {
    const [row] = await deps.db.select({ visibility: roomSettings.visibility }).from(roomSettings).where(eq(roomSettings.room, room))
    return row?.visibility ?? 'public'
  }
  const visibilityNowOr = (room: string): Visibility | Promise<Visibility> => {
    const hit = cache.get(room)
    if (hit && now() - hit.at < ttl) return hit.visibility
    const under = reading.get(room)
    if (under) return under.promise
    const entry = { promise: undefined as unknown as Promise<Visibility>, stale: false }
    entry.promise = (async () => {
      let visibility: Visibility
      do {
        // What a read under way when a change came in returns may be from before the change, and
        // this node has already re-checked the room's subscribers for it: a subscriber let in on
        // the old value would never be dropped. So it reads again, and every caller (those that
        // came after the change too, in the order they came) gets the value after the change.
        entry.stale = false
        visibility = await read(room)
      } while (entry.stale)
      if (cache.size > 100_000) cache.clear()
      cache.set(room, { visibility, at: now() })
      return visibility
    })().finally(() => {
      if (reading.get(room) === entry) reading.delete(room)
    })
    reading.set(room, entry)
    return entry.promise
  }
  return {
    visibility: async (room) => visibilityNowOr(room),
    visibilityNowOr,
    async setVisibility(room, visibility) {
      await deps.db
        .insert(roomSettings)
        .values({ room, visibility })
        .onConflictDoUpdate({ target: roomSettings.room, set: { visibility, updatedAt: new Date(now()) } })
      changed(room)
      deps.nc.publish(subject, room)
      await deps.nc.flush().catch(() => {})
    },
    onChange: (l) => void listeners.push(l),
    stop: () => {
      clearInterval(polling)
      sub.unsubscribe()
    },
  }
}
