import { unknownStreamState } from '../../../../core/channels'
import type { StreamEnded, StreamStarted, StreamUpdated, StreamViewersSampled } from '../../../../core/events'

/** A stream as the read model holds it (see the `streams` table). */
export type StreamRow = {
  stream: string
  status: 'live' | 'offline'
  title: string | null
  category: string | null
  startedAt: Date | null
  endedAt: Date | null
  /** How many broadcasts it had: the current one (live) or the last one (offline). 0: none yet. */
  broadcast: number
  viewers: number
  peakViewers: number
  uniqueViewers: number
}

/** A `stream.*` event with its event time. */
export type StreamEvent =
  | { type: 'stream.started'; data: StreamStarted; at: Date }
  | { type: 'stream.updated'; data: StreamUpdated; at: Date }
  | { type: 'stream.ended'; data: StreamEnded; at: Date }
  | { type: 'stream.viewers.sampled'; data: StreamViewersSampled; at: Date }

/**
 * What an event does to its stream: the stream after it, and the users it counted as new unique
 * viewers of its broadcast (their rows must record `next.broadcast`); null when nothing changes.
 * `lastBroadcast(user)` is the broadcast in which a user was last counted (undefined: never).
 */
export type Evolved = { next: StreamRow; counted: string[] } | null

const empty = (stream: string): StreamRow => ({ ...unknownStreamState(stream), startedAt: null, endedAt: null, broadcast: 0 })

/**
 * The stream after an event:
 * - started: a new broadcast (also when one is live: the streaming service restarted it), live,
 *   with the event's title, its category when given (else the stream keeps its last one), started
 *   at the event's time, no viewers, peak and unique counted afresh.
 * - updated: the given title and/or category, live or offline (an unknown stream becomes a known,
 *   offline one).
 * - ended: offline at the event's time with no current viewers; peak and unique stay, those of the
 *   broadcast that ended. Ending an offline or unknown stream changes nothing.
 * - viewers.sampled: only while live (samples of viewers lingering after the end, or before a
 *   start, change nothing): current viewers, the peak (a max, so repeated samples are harmless),
 *   and each sampled user not yet counted in this broadcast adds one unique viewer (a set).
 */
export function evolveStream(current: StreamRow | undefined, event: StreamEvent, lastBroadcast: (user: string) => number | undefined): Evolved {
  const was = current ?? empty(event.data.stream)
  switch (event.type) {
    case 'stream.started': {
      const d = event.data
      const next: StreamRow = {
        ...was,
        status: 'live',
        title: d.title,
        category: d.category ?? was.category,
        startedAt: event.at,
        endedAt: null,
        broadcast: was.broadcast + 1,
        viewers: 0,
        peakViewers: 0,
        uniqueViewers: 0,
      }
      return { next, counted: [] }
    }
    case 'stream.updated': {
      const d = event.data
      const next: StreamRow = { ...was, title: d.title ?? was.title, category: d.category ?? was.category }
      return current && next.title === was.title && next.category === was.category ? null : { next, counted: [] }
    }
    case 'stream.ended':
      if (was.status !== 'live') return null
      return { next: { ...was, status: 'offline', endedAt: event.at, viewers: 0 }, counted: [] }
    case 'stream.viewers.sampled': {
      if (was.status !== 'live') return null
      const counted: string[] = []
      for (const user of new Set(event.data.users)) {
        const last = lastBroadcast(user)
        if (last === undefined || last < was.broadcast) counted.push(user)
      }
      const viewers = event.data.viewers
      const next: StreamRow = { ...was, viewers, peakViewers: Math.max(was.peakViewers, viewers), uniqueViewers: was.uniqueViewers + counted.length }
      return viewers === was.viewers && counted.length === 0 ? null : { next, counted }
    }
    default: {
      const never: never = event
      throw new Error(`unknown stream event ${JSON.stringify(never)}`)
    }
  }
}

