import { and, asc, desc, eq, gt, lt, or } from 'drizzle-orm'
import { channelOf, streamPollOf, streamStateOf as stateOf, unknownStreamState, type StreamPoll, type StreamState } from '../../../../core/channels'
import type { Db } from '../../../../core/db/client'
import { streams } from '../../../../core/db/schema'
import { MAX_VIEWERS, NAME_CHARS } from '../../../../core/events'
import { decodePageCursor, encodePageCursor } from '../page-cursor'
import { readChannelSnapshot, type ChannelSnapshot } from '../channel-snapshot'
import { openPollsOf } from '../polls/service'
import type { LivePage, StreamAnswer } from './model'
import type { LiveStream } from './sampler'


/**
 * A stream with its open poll (the latest opened), as `GET /v1/streams/:stream` answers; undefined
 * when unknown. A REST answer is a read of now, so its poll has the tallies of now (unlike the
 * channel's, see StreamSnapshot).
 */
export async function readStream(db: Db, stream: string): Promise<StreamAnswer | undefined> {
  const [[row], open] = await Promise.all([db.select().from(streams).where(eq(streams.stream, stream)), openPollsOf(db, stream)])
  if (!row) return undefined
  return { ...stateOf(row), ...(open[0] ? { poll: open[0] } : {}) }
}

/**
 * What `stream:<id>` snapshots: the stream's state (offline and empty for a stream not known yet),
 * its open poll as `poll`, and every open poll as `polls` (normally one; a poll opened while
 * another is open adds one). Updates then carry the whole state (`kind: "state"`) or one poll
 * opening or closing (`kind: "poll"`): keep `polls` by id and show the latest opened.
 *
 * The polls are their definitions without tallies (StreamPoll): the channel does not change with
 * votes, so a snapshot at version v must not hold the votes of whenever it was read. Tallies are
 * on `poll:<id>`.
 */
export type StreamSnapshot = StreamState & { poll?: StreamPoll; polls: StreamPoll[] }

/** The channel `stream:<id>` with its version and epoch (see readChannelSnapshot). */
export function streamSnapshot(db: Db, stream: string): Promise<ChannelSnapshot<StreamSnapshot>> {
  return readChannelSnapshot(db, channelOf.stream(stream), async (q) => {
    const [row] = await q.select().from(streams).where(eq(streams.stream, stream))
    const open = (await openPollsOf(q, stream)).map(streamPollOf).filter((p) => p.status === 'open')
    return { ...(row ? stateOf(row) : unknownStreamState(stream)), ...(open[0] ? { poll: open[0] } : {}), polls: open }
  })
}

/** `next`/`after` of the live list: the last entry's sort key [viewers, stream] (see page-cursor.ts). */
const encodeCursor = (viewers: number, stream: string) => encodePageCursor([viewers, stream])

const streamIdRe = new RegExp(`^${NAME_CHARS}$`)

// At most what a viewer count can be (stream.viewers.sampled): past it the integer column refuses the comparison.
const decodeCursor = (cursor: string): { viewers: number; stream: string } =>
  decodePageCursor(cursor, 2, 'after must be the `next` cursor of a previous page of live streams', ([viewers, stream]) =>
    Number.isSafeInteger(viewers) && (viewers as number) >= 0 && (viewers as number) <= MAX_VIEWERS && typeof stream === 'string' && streamIdRe.test(stream)
      ? { viewers: viewers as number, stream }
      : undefined,
  )

/**
 * A page of live streams, most viewers first (ties by stream id), from the partial index of live
 * streams. Keyset paging: the page after a cursor starts below its (viewers, stream). Viewer counts
 * move every second, so a stream whose count changed between two pages may show on both or on
 * neither, as in any live ranking.
 */
export async function liveStreams(db: Db, page: { limit: number; after?: string }): Promise<LivePage> {
  const from = page.after === undefined ? undefined : decodeCursor(page.after)
  const live = eq(streams.status, 'live')
  const rows = await db
    .select()
    .from(streams)
    .where(from ? and(live, or(lt(streams.viewers, from.viewers), and(eq(streams.viewers, from.viewers), gt(streams.stream, from.stream)))) : live)
    .orderBy(desc(streams.viewers), asc(streams.stream))
    .limit(page.limit + 1)
  const shown = rows.slice(0, page.limit)
  const last = shown.at(-1)
  return { streams: shown.map(stateOf), next: rows.length > page.limit && last ? encodeCursor(last.viewers, last.stream) : null }
}

/** Streams that are live now, with what the viewer sampler needs of them. */
export async function liveStreamsToSample(db: Db): Promise<Map<string, LiveStream>> {
  const rows = await db
    .select({ stream: streams.stream, startedAt: streams.startedAt, viewers: streams.viewers })
    .from(streams)
    .where(eq(streams.status, 'live'))
  return new Map(rows.map((r) => [r.stream, { startedAt: r.startedAt?.toISOString() ?? null, viewers: r.viewers }]))
}
