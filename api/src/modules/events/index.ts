import { Elysia } from 'elysia'
import type { AuthPlugin } from '../../auth/plugin'
import { BodyErrors, ErrorResponse } from '../../error-model'
import { PublishBody, PublishResponse } from './model'
import type { Ingest } from './service'
import { contextOfRequest } from '../../../../core/tracing'

/** POST /v1/events: publish one event or a batch, as a user or a key (the permissions table decides). */
export function eventsModule(auth: AuthPlugin, ingest: Ingest) {
  return new Elysia({ prefix: '/v1' })
    .use(auth)
    .post(
      '/events',
      async ({ body, principal, status, request }) => {
        const inputs = 'events' in body ? body.events : [body]
        // A `traceparent` header makes the events part of the caller's trace (README, Tracing).
        return status(202, { results: await ingest.publish(inputs, principal, { via: 'http', trace: contextOfRequest(request) }) })
      },
      {
        auth: 'principal',
        body: PublishBody,
        response: { 202: PublishResponse, 401: ErrorResponse, 403: ErrorResponse, 422: ErrorResponse, 429: ErrorResponse, 503: ErrorResponse, ...BodyErrors },
        detail: {
          tags: ['events'],
          summary: 'Publish events',
          description:
            'One event or `{ events: [...] }` (1..500). Answers 202 only once JetStream stored every event. ' +
            'Who may publish which type: see the README (scores: keys with the scope; chat: users, as themselves, and keys; ' +
            'deletions: admins, keys with admin:write, moderators). ' +
            'Events without `id` get a UUIDv7. Ids are de-duplicated per publisher (user or key): the same publisher ' +
            'resending an id within the dedup window gets `duplicate: true`; the same id from another publisher is another event. ' +
            '503 `unavailable` when JetStream failed to store some events: answered once every publish settled, with ' +
            '`error.details.results` listing every event in input order, generated ids included: ' +
            '`{ id, stored: true, seq, duplicate }` or `{ id, stored: false }` (not confirmed: it may still be stored). ' +
            'Resend the events with exactly those ids: stored ones come back `duplicate: true`, so nothing is stored twice. ' +
            '503 `storage_full` (JetStream has no storage left) carries the same `results`; resend once storage is freed. ' +
            '503 `publish_denied` (NATS denies this node\'s user the subject of an event type, named in the message and ' +
            '`details.subject`: an operator must grant it) carries the same `results`; those events are not stored; resend once granted. ' +
            '503 `overloaded` (too many events in flight on this node) publishes nothing. ' +
            "503 `database_unavailable` (a chat room's visibility could not be read from Postgres) publishes nothing. " +
            '429 `rate_limited` (with `Retry-After` and `details.retryAfterMs`) publishes nothing: each event costs one ' +
            "of the caller's budget (README, Limits); resend the same events after the wait.",
        },
      },
    )
}
