import { t } from 'elysia'
import { EventInput } from '../../../../core/events'

/** Most events one request (REST or WebSocket) may publish. */
export const MAX_BATCH = 500

/** A batch of events. The 500 cap is checked by the ingest service to answer `too_many_events`. */
export const EventBatch = t.Object(
  { events: t.Array(EventInput, { minItems: 1, description: `1..${MAX_BATCH} events` }) },
  { additionalProperties: false },
)
export type EventBatch = typeof EventBatch.static

/** POST /v1/events accepts one event or a batch. */
export const PublishBody = t.Union([EventBatch, EventInput], {
  error: 'body must be one event { id?, type, data } or { events: [ ... ] }',
})
export type PublishBody = typeof PublishBody.static

/** Outcome of one stored event. `duplicate`: the id was already stored within the dedup window. */
export const PublishResult = t.Object({
  id: t.String(),
  seq: t.Integer({ description: 'JetStream sequence of the stored event' }),
  duplicate: t.Boolean(),
})
export type PublishResult = typeof PublishResult.static

export const PublishResponse = t.Object({ results: t.Array(PublishResult) })

/**
 * One event of a request that failed part-way (503 `unavailable`, in `error.details.results`):
 * stored (a PublishResult), or not confirmed stored (it may still have been, if only the answer was
 * lost). Resending every event with its id is safe: stored ones come back `duplicate: true`.
 */
export type PublishOutcome = (PublishResult & { stored: true }) | { id: string; stored: false }
