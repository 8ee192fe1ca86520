import { inArray, sql, type SQL, type SQLWrapper } from 'drizzle-orm'
import { channelOf } from '../../../../core/channels'
import { rowsOf, type Db } from '../../../../core/db/client'
import { lookupByKey, recordset, fromExcluded } from '../../../../core/db/recordset'
import { streams, streamViewers } from '../../../../core/db/schema'
import type { StoredEvent } from '../../../../core/events'
import type { Applied, Change, Projection, SequencedEvent } from '../types'
import { streamStateOf as stateOf } from '../../../../core/channels'
import { evolveStream, type StreamEvent, type StreamRow } from './projection'
import { projectionAreas } from '../../../../core/projections'

type StreamStoredEvent = Extract<StoredEvent, { type: `stream.${string}` }>

// Neither a stream name nor a user id (ActorId) holds a NUL.
const viewerKey = (stream: string, user: string) => `${stream}\u0000${user}`

/**
 * Applies a batch of `stream.*` events: loads the batch's streams and what is known of its sampled
 * users (two queries, one round trip), evolves them in memory in event order, and returns the two
 * writes (the changed streams; the users newly counted, with their broadcast) for the batch to run
 * in its one statement. Every event that changes what a stream shows is one change of its channel
 * carrying the whole new state.
 */
export async function applyStreams(db: Db, events: SequencedEvent[]): Promise<Applied> {
  const list: StreamEvent[] = []
  for (const { event, storedAt } of events) {
    const e = event as StreamStoredEvent
    switch (e.type) {
      case 'stream.started':
      case 'stream.updated':
      case 'stream.ended':
      case 'stream.viewers.sampled': {
        const at = e.at && !Number.isNaN(Date.parse(e.at)) ? new Date(e.at) : storedAt
        list.push({ type: e.type, data: e.data, at } as StreamEvent)
        break
      }
      default:
        // The batch dead-letters events of other areas before they get here.
        throw new Error(`streams projection got ${event.type}`)
    }
  }
  if (list.length === 0) return { changes: [] }

  const names = [...new Set(list.map((e) => e.data.stream))]
  const sampled = new Map<string, { stream: string; user_id: string }>()
  for (const e of list) {
    if (e.type !== 'stream.viewers.sampled') continue
    for (const user of e.data.users) sampled.set(viewerKey(e.data.stream, user), { stream: e.data.stream, user_id: user })
  }
  const [streamRows, viewerRows] = await Promise.all([
    db.select().from(streams).where(inArray(streams.stream, names)),
    sampled.size === 0
      ? Promise.resolve([])
      : rowsOf<{ stream: string; user_id: string; broadcast: number | string }>(db, lookupByKey(streamViewers, ['stream', 'user_id'], [...sampled.values()])),
  ])
  const state = new Map<string, StreamRow>(streamRows.map((r) => [r.stream, { ...r }]))
  const lastBroadcast = new Map<string, number>(viewerRows.map((r) => [viewerKey(r.stream, r.user_id), Number(r.broadcast)]))

  const changes: Change[] = []
  const dirty = new Map<string, StreamRow>()
  const counted = new Map<string, { stream: string; user: string; broadcast: number }>()
  for (const e of list) {
    const stream = e.data.stream
    const r = evolveStream(state.get(stream), e, (user) => lastBroadcast.get(viewerKey(stream, user)))
    if (!r) continue
    state.set(stream, r.next)
    dirty.set(stream, r.next)
    for (const user of r.counted) {
      lastBroadcast.set(viewerKey(stream, user), r.next.broadcast)
      counted.set(viewerKey(stream, user), { stream, user, broadcast: r.next.broadcast })
    }
    changes.push({ channel: channelOf.stream(stream), data: { kind: 'state', state: stateOf(r.next) } })
  }
  if (dirty.size === 0) return { changes }

  const rows = [...dirty.values()].map((s) => ({ ...s, startedAt: s.startedAt?.toISOString() ?? null, endedAt: s.endedAt?.toISOString() ?? null }))
  const columns = {
    stream: 'text',
    status: 'text',
    title: 'text',
    category: 'text',
    startedAt: 'timestamptz',
    endedAt: 'timestamptz',
    broadcast: 'int',
    viewers: 'int',
    peakViewers: 'int',
    uniqueViewers: 'int',
  }
  const viewers = [...counted.values()]
  const write = (when: SQL) => {
    const out: SQLWrapper[] = [
      db
        .insert(streams)
        .select(
          sql`select stream, status, title, category, "startedAt", "endedAt", broadcast, viewers, "peakViewers", "uniqueViewers" from ${recordset('s', columns, rows)} where ${when}`,
        )
        .onConflictDoUpdate({
          target: streams.stream,
          set: fromExcluded(streams, 'status', 'title', 'category', 'startedAt', 'endedAt', 'broadcast', 'viewers', 'peakViewers', 'uniqueViewers'),
        }),
    ]
    if (viewers.length > 0) {
      out.push(
        db
          .insert(streamViewers)
          .select(sql`select stream, "user", broadcast from ${recordset('v', { stream: 'text', user: 'text', broadcast: 'int' }, viewers)} where ${when}`)
          .onConflictDoUpdate({ target: [streamViewers.stream, streamViewers.user], set: { broadcast: sql`excluded.broadcast` } }),
      )
    }
    return out
  }
  return { changes, write }
}

/** The streams read model: `stream.*` events into streams and stream_viewers. */
export const streamsProjection: Projection = { name: 'streams', area: projectionAreas.streams, apply: applyStreams }
