import { every } from '../../../../core/backoff'
import { channelOf } from '../../../../core/channels'
import type { EventInput } from '../../../../core/events'
import type { Logger } from '../../../../core/logger'
import { rootKey } from '../../auth/principal'
import type { Presence } from '../../presence'
import { MAX_BATCH } from '../events/model'
import type { Ingest } from '../events/service'

/** Most users one `stream.viewers.sampled` carries (its contract's bound). */
export const USERS_PER_SAMPLE = 5000

/** A live stream as the sampler reads it from the read model. */
export type LiveStream = { startedAt: string | null; viewers: number }

export type ViewerSampler = { stop: () => Promise<void> }

/**
 * Writes what presence sees of live streams into the event stream, so that a stream's current,
 * peak and unique viewers are projected exactly once and a rebuild gives them again (presence
 * itself is memory on the API nodes, gone with them).
 *
 * Every `intervalMs` one node samples: the one with the lowest id among this node and the peers
 * its presence hears from. When it dies its peers drop it after FANFARE_PRESENCE_TTL_MS and the
 * next lowest takes over; two samplers at once (a node joining with a lower id, a partition) only
 * repeat samples, which change nothing: the peak is a max and unique viewers a set. A node samples
 * only after `warmupMs`, once its presence has heard every peer (a new node would otherwise
 * believe itself alone, and lowest). For each stream the read model says is live (read once per
 * round), it publishes one `stream.viewers.sampled` through the ingest service as the API nodes'
 * own principal when the cluster-wide count of `stream:<id>` connections changed or users were
 * seen that it has not sampled in this broadcast (at most USERS_PER_SAMPLE per event: more
 * events then). Ended streams are not sampled, so viewers lingering after the end make no events.
 * A publish that fails is tried again next round (nothing is marked sampled).
 */
export function startViewerSampler(deps: {
  presence: Pick<Presence, 'node' | 'peers' | 'totals'>
  ingest: Pick<Ingest, 'publish'>
  /** Live streams by id, from the read model. */
  liveStreams: () => Promise<Map<string, LiveStream>>
  logger: Logger
  intervalMs?: number
  warmupMs?: number
}): ViewerSampler {
  const log = deps.logger.child({ component: 'viewer-sampler' })
  const intervalMs = deps.intervalMs ?? 1000
  const startedAt = Date.now()
  const warmupMs = deps.warmupMs ?? 3000
  /** What this node last sampled per live stream: its broadcast, viewers, and users already sent. */
  const sampled = new Map<string, { broadcast: string | null; viewers: number; users: Set<string> }>()

  // Event ids name the node that sampled (which one it was is otherwise lost: every node publishes
  // as `system`); the UUIDv7 keeps them unique across restarts of a node with the same id.
  const idPrefix = `${deps.presence.node.replace(/[^A-Za-z0-9_.@-]/g, '_').slice(0, 64)}:`
  const designated = () => [deps.presence.node, ...deps.presence.peers()].sort()[0] === deps.presence.node

  async function round() {
    if (Date.now() - startedAt < warmupMs) return
    if (!designated()) {
      // Another node samples. Should this one take over later, it starts afresh from the read
      // model, not from what it knew then.
      sampled.clear()
      return
    }
    const live = await deps.liveStreams()
    for (const stream of sampled.keys()) if (!live.has(stream)) sampled.delete(stream)
    const events: EventInput[] = []
    const done: (() => void)[] = []
    for (const [stream, info] of live) {
      let seen = sampled.get(stream)
      // A new broadcast, or one this node has not sampled yet (it just took over): start from the
      // viewers the model holds (so a count that fell to 0 meanwhile is still written), no user sent.
      if (!seen || seen.broadcast !== info.startedAt) sampled.set(stream, (seen = { broadcast: info.startedAt, viewers: info.viewers, users: new Set() }))
      const { connections, users } = deps.presence.totals(channelOf.stream(stream))
      const fresh = users.filter((u) => !seen.users.has(u))
      if (connections === seen.viewers && fresh.length === 0) continue
      for (let i = 0; i === 0 || i < fresh.length; i += USERS_PER_SAMPLE) {
        events.push({ id: `${idPrefix}${Bun.randomUUIDv7()}`, type: 'stream.viewers.sampled', data: { stream, viewers: connections, users: fresh.slice(i, i + USERS_PER_SAMPLE) } })
      }
      const mark = seen
      done.push(() => {
        mark.viewers = connections
        for (const u of fresh) mark.users.add(u)
      })
    }
    if (events.length === 0) return
    const system = rootKey('system')
    for (let i = 0; i < events.length; i += MAX_BATCH) await deps.ingest.publish(events.slice(i, i + MAX_BATCH), system)
    for (const mark of done) mark()
  }

  return every(intervalMs, round, (err) => log.warn({ err }, 'viewer sample not published; trying again next round'))
}
