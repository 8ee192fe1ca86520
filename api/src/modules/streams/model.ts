import { t } from 'elysia'
import { Name } from '../../../../core/events'
import { integerParam } from '../../params'
import { PollView } from '../polls/model'

export const StreamParams = t.Object({ stream: Name })

/** A stream's state (see StreamState in core/channels.ts). */
export const StreamState = t.Object({
  stream: t.String(),
  status: t.Union([t.Literal('live'), t.Literal('offline')]),
  title: t.Union([t.String(), t.Null()]),
  category: t.Union([t.String(), t.Null()]),
  startedAt: t.Union([t.String(), t.Null()], { description: 'ISO 8601, event time of the current or last stream.started' }),
  endedAt: t.Union([t.String(), t.Null()], { description: 'ISO 8601, event time of stream.ended; null while live' }),
  viewers: t.Integer({ minimum: 0, description: 'connections watching stream:<id> at the last sample (about once a second); 0 while offline' }),
  peakViewers: t.Integer({ minimum: 0, description: 'most concurrent viewers of the current or last broadcast' }),
  uniqueViewers: t.Integer({ minimum: 0, description: 'distinct signed-in users who watched the current or last broadcast' }),
})

/** `GET /v1/streams/:stream`: the state and the open poll, if any. */
export const StreamAnswer = t.Composite([
  StreamState,
  t.Object({
    poll: t.Optional(
      t.Composite([PollView], {
        description:
          "the stream's open poll (the latest opened, when several are), with its tallies now (the `stream:<id>` channel carries polls without tallies: follow `poll:<id>` for them live)",
      }),
    ),
  }),
])
export type StreamAnswer = typeof StreamAnswer.static

export const LiveQuery = t.Object({
  status: t.Optional(t.Literal('live', { error: 'status must be live: only live streams are listed', description: 'only live streams are listed (the default)' })),
  limit: integerParam('limit', { minimum: 1, maximum: 100, default: 20 }),
  after: t.Optional(t.String({ maxLength: 512, error: 'after must be the `next` cursor of a previous page', description: 'the `next` of the previous page' })),
})
export type LiveQuery = typeof LiveQuery.static

export const LivePage = t.Object({
  streams: t.Array(StreamState, { description: 'most viewers first, then by stream id' }),
  next: t.Union([t.String(), t.Null()], { description: 'pass as `after` for the following page; null: this page ends the list' }),
})
export type LivePage = typeof LivePage.static
