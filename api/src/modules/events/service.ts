import type { NatsConnection } from '@nats-io/transport-node'
import { context, SpanKind, SpanStatusCode, type Context, type Span } from '@opentelemetry/api'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import { AcksDenied, createAckedPublisher, isStorageFull, PublishDenied, type StreamAck, type StreamMessage } from '../../../../core/acked-publish'
import type { Config } from '../../../../core/config'
import {
  admitData,
  contracts,
  EventInput,
  isEventType,
  keyOf,
  partitionOf,
  PrincipalId,
  siteMsgIdOf,
  subjects,
  type EventType,
  type StoredEvent,
} from '../../../../core/events'
import type { Logger } from '../../../../core/logger'
import { siteOf, topology } from '../../../../core/nats'
import { createMetrics, type Metrics } from '../../../../core/metrics'
import { natsHeadersOf, tracer } from '../../../../core/tracing'
import { UNKNOWN_FIELD, type Problem } from '../../../../core/validation'
import { channelOf } from '../../../../core/channels'
import { mayPublish, maySubscribe, publishersOf, type Visibility } from '../../auth/permissions'
import type { RoomAccess } from '../../auth/rooms'
import { principalId, type Principal } from '../../auth/principal'
import { databaseUnavailable, Forbidden, Invalid, Unauthorized, Unavailable, validationProblems } from '../../errors'
import { MAX_BATCH, type PublishOutcome, type PublishResult } from './model'
import { createReactionBatcher, type AcceptedReaction } from './reaction-batches'

/** Publishes client events to JetStream. Shared by REST and the WebSocket layer. */
export type Ingest = {
  /**
   * Validates every event, then stores them all in JetStream; resolves only once JetStream has
   * acknowledged every one, with results in input order. If any event is invalid nothing is
   * published (422 `unknown_event_type` / `invalid_event` / `duplicate_id_in_batch` /
   * `too_many_events`, 403 `forbidden`). NATS down or too many events in flight: 503 at once,
   * nothing published. A JetStream failure of some publishes is 503 `unavailable` once every
   * publish of the request settled, with `details.results`: each event's id (generated ones
   * included) and whether JetStream confirmed storing it (PublishOutcome). Resending the events
   * with those ids is safe: stored ones are de-duplicated. JetStream out of storage is 503
   * `storage_full`, with the same `details.results`; NATS denying this node's user an event
   * subject is 503 `publish_denied` (`details.subject`, the same `details.results`).
   * Who may publish which type is the permissions table (403 `forbidden`, nothing published).
   * Events are stored with the principal's id as `by`, and ids are de-duplicated per principal:
   * the same id from another principal is another event. A user's chat messages are stamped with
   * their `sub` and display name: naming another user is 403.
   * `reaction.sent` events are stored in batches (see ReactionBatcher): acknowledged once the batch
   * holding them is stored, with that message's `seq`, and `duplicate` always false (the reactions
   * projection counts a resent reaction once).
   */
  publish(inputs: EventInput[], principal: Principal, opts?: PublishOptions): Promise<PublishResult[]>
  /**
   * Refuses new publishes (503), waits for those in flight to be acknowledged (at most the publish
   * timeout), then closes the acknowledgement subscription. For a node's shutdown, after its
   * server stopped taking requests.
   */
  stop(): Promise<void>
}

/** Where a publish came from, for metrics and traces. */
export type PublishOptions = {
  /** `http` (POST /v1/events), `ws` (a publish frame) or `internal` (this node's own events). Default `internal`. */
  via?: 'http' | 'ws' | 'internal'
  /** The caller's trace context (an HTTP request's or a frame's `traceparent`); default the active one. */
  trace?: Context
}

export type IngestOptions = {
  config: Config
  nc: NatsConnection
  logger: Logger
  /** How long to wait for JetStream's acknowledgement of one event. */
  publishTimeoutMs?: number
  /** The clock, for `at`. */
  now?: () => Date
  /** Events stored and publish durations are counted here; a registry of its own when absent. */
  metrics?: Metrics
  /** Room visibility: a user posts (or, as a moderator, deletes) only in rooms they may read (a private room is closed to others). */
  rooms: Pick<RoomAccess, 'visibilityNowOr'>
}

const inputChecker = TypeCompiler.Compile(EventInput)
const principalChecker = TypeCompiler.Compile(PrincipalId)

/** A new event id: a UUIDv7, so ids sort by creation time. */
export const newEventId = (): string => Bun.randomUUIDv7()

/** Creates the ingest service. Makes no connection: it uses `nc` when publishing. */
export function createIngest({ config, nc, logger, publishTimeoutMs = 5000, now = () => new Date(), metrics = createMetrics(), rooms }: IngestOptions): Ingest {
  const t = topology(config)
  const site = siteOf(config)
  // At an edge the de-duplication id names the site: the hub's event stream sources every edge's
  // stream, and on nats-server 2.9 a sourced message the hub takes for a duplicate stalls that
  // source for the whole de-duplication window and is then stored anyway (nats-server#4459). Ids
  // of one site never meet another's there (see siteMsgIdOf); a resend to the same site is
  // de-duplicated by it.
  const edgeDomain = site.kind === 'edge' ? site.domain : undefined
  const msgIdOf = (e: Pick<StoredEvent, 'by' | 'id'>) => siteMsgIdOf(e, edgeDomain)
  const log = logger.child({ component: 'ingest' })
  // Every event of this node goes out through one publisher (one acknowledgement subscription).
  const publisher = createAckedPublisher(nc, { timeoutMs: publishTimeoutMs })
  // Events published and not yet acknowledged by JetStream, over all requests of this node.
  let inFlight = 0
  // Set by stop(): a node shutting down takes no new publishes.
  let stopped = false
  // While NATS is down the client would hold publishes until the timeout: answer 503 at once.
  let disconnected = false
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === 'disconnect') disconnected = true
      else if (s.type === 'reconnect') disconnected = false
    }
  })()

  // Reactions come by the thousand a second: they are stored in batches (see ReactionBatcher).
  const reactions = createReactionBatcher({
    publisher,
    prefix: t.prefix,
    partitions: t.partitions,
    eventStream: t.eventStream,
    dedupWindowMs: config.FANFARE_DEDUP_WINDOW_MS,
    now,
    newId: newEventId,
  })

  // nats.js writes what was published on a microtask, so a publish per WebSocket frame (each frame
  // its own event-loop turn) would cost a socket write each: most of an API node's CPU under WS
  // ingest. Publishes wait for the end of the turn instead and leave together, in call order, as
  // one AckedPublisher batch (one timer and one promise per turn, not per frame: a WebSocket frame
  // is a request of one event). They share the turn's `at` too: one clock read and ISO string per
  // turn, not per frame.
  type Turn = { build: (at: string) => StreamMessage[]; done: (acks: (StreamAck | undefined)[], error?: Error) => void }
  let turn: Turn[] = []
  const publishAtEndOfTurn = (build: Turn['build']) =>
    new Promise<{ acks: (StreamAck | undefined)[]; error?: Error }>((resolve) => {
      const done: Turn['done'] = (acks, error) => resolve(error ? { acks, error } : { acks })
      if (turn.push({ build, done }) > 1) return
      setImmediate(() => {
        const entries = turn
        turn = []
        const at = now().toISOString()
        const all: StreamMessage[] = []
        const ends: number[] = []
        const built: Turn[] = []
        for (const e of entries) {
          try {
            for (const m of e.build(at)) all.push(m)
            built.push(e)
            ends.push(all.length)
          } catch (err) {
            // A bug in one request's messages fails that request alone, never the turn.
            e.done([], err as Error)
          }
        }
        void publisher.publish(all).then((outcome) => {
          // The batch's error is its first failure, maybe another request's: it is only logged.
          for (let k = 0, from = 0; k < built.length; from = ends[k++]) {
            const acks = outcome.acks.slice(from, ends[k])
            built[k].done(acks, acks.includes(undefined) ? outcome.error : undefined)
          }
        })
      })
    })

  /**
   * Publishes inside an ingest span (a PRODUCER span, child of the caller's context): each event's
   * message carries it as `traceparent` when it is sampled. With tracing off the span is the API's
   * no-op and no header is added.
   */
  const publish: Ingest['publish'] = (inputs, principal, opts = {}) => {
    const via = opts.via ?? 'internal'
    return tracer.startActiveSpan(
      'fanfare.ingest',
      { kind: SpanKind.PRODUCER, attributes: { 'messaging.system': 'nats', 'messaging.operation.type': 'send', 'messaging.destination.name': t.eventStream, 'fanfare.via': via, 'messaging.batch.message_count': inputs.length } },
      opts.trace ?? context.active(),
      async (span) => {
        try {
          return await publishEvents(inputs, principal, via, span)
        } catch (err) {
          span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error)?.message })
          throw err
        } finally {
          span.end()
        }
      },
    )
  }

  /**
   * Stores a request's events at the end of the turn, all in flight at once: one connection writes
   * them in call order and the server stores them in that order, so events of one key keep their
   * request order. Each is a plain publish through the AckedPublisher (one subscription takes every
   * acknowledgement, one timer per turn) rather than a `js.publish` (a request, a timer and a promise per event):
   * the same promise, stored once acknowledged, at a fraction of the API's CPU. Every publish is
   * waited for, failed or not: the in-flight count must hold the request's events until none of
   * them is pending any more, and the answer must say which were stored.
   */
  const store = async (events: Omit<StoredEvent, 'at'>[], span: Span): Promise<PromiseSettledResult<PublishResult>[]> => {
    const settled: PromiseSettledResult<PublishResult>[] = new Array(events.length)
    const reactionResults: Promise<void>[] = []
    const indexes: number[] = []
    const subjectsOf: string[] = []
    const build = (at: string) => {
      const messages: StreamMessage[] = []
      for (let i = 0; i < events.length; i++) {
        const e = events[i]
        if (e.type === 'reaction.sent') {
          reactionResults.push(
            reactions.add(e as AcceptedReaction).then(
              (value) => void (settled[i] = { status: 'fulfilled', value }),
              (reason) => void (settled[i] = { status: 'rejected', reason }),
            ),
          )
          continue
        }
        // A header set of its own per message, for its id (and the trace context when sampled).
        const subject = subjects.event(t.prefix, partitionOf(keyOf(e), t.partitions), e.type)
        messages.push({ subject, body: JSON.stringify({ ...e, at }), msgId: msgIdOf(e), headers: natsHeadersOf(span) })
        indexes.push(i)
        subjectsOf.push(subject)
      }
      return messages
    }
    const outcome = await publishAtEndOfTurn(build)
    await Promise.all(reactionResults)
    for (let j = 0; j < indexes.length; j++) {
      const e = events[indexes[j]]
      const ack = outcome.acks[j]
      settled[indexes[j]] = ack ? checked(e.id, ack) : { status: 'rejected', reason: reasonOf(outcome.error, subjectsOf[j]) }
    }
    return settled
  }

  /**
   * Why an event was not acknowledged. The batch's error is its first failure, maybe another
   * event's (another request's, in the same turn): a denial is this event's only when NATS denied
   * its own subject. Any other event of that batch was ended unconfirmed (it may still be stored).
   */
  const reasonOf = (error: Error | undefined, subject: string): Error => {
    if (error instanceof PublishDenied && error.subject !== subject) return new Error('JetStream did not acknowledge the event before its batch ended')
    return error ?? new Error('JetStream did not acknowledge the event')
  }

  /** An acknowledged event's result, or why it is no 202 although JetStream stored it. */
  const checked = (id: string, ack: StreamAck): PromiseSettledResult<PublishResult> => {
    // Checked on the ack rather than sent as an Nats-Expected-Stream header (a header per event
    // costs the API and the server): another stream capturing our subjects is a misconfiguration
    // to report, never a 202 for events the workers will not see.
    if (ack.stream !== t.eventStream) return { status: 'rejected', reason: new Error(`event stored in stream ${ack.stream}, expected ${t.eventStream}`) }
    // An ack from another domain: the leaf link carries event subjects to the hub (its deny rules
    // are missing), so events are stored twice. Never a 202 for that.
    if (site.kind === 'edge' && ack.domain !== site.domain) {
      log.error({ domain: ack.domain }, 'event stored outside the edge domain: the leaf link must deny the event subjects (README "Running at the edge")')
      return { status: 'rejected', reason: new Error(`event stored in JetStream domain ${ack.domain}, expected ${site.domain}`) }
    }
    return { status: 'fulfilled', value: { id, seq: ack.seq, duplicate: ack.duplicate } }
  }

  /** A 503 for `count` events, counted: what an operator alerts on (NATS away, JetStream full, this node's queue full). */
  const refused = (err: Unavailable, count: number) => {
    metrics.ingest.refused(err.code, count)
    return err
  }

  const publishEvents = async (inputs: EventInput[], principal: Principal, via: 'http' | 'ws' | 'internal', span: Span): Promise<PublishResult[]> => {
    const by = principalId(principal)
    // A principal comes from our own auth code, never from the request: a bad one is a bug.
    if (!principalChecker.Check(by)) throw new Error(`invalid principal ${JSON.stringify(by)}`)
    const events = validate(inputs, principal, by, config.FANFARE_MATCH_JOIN_GRACE_MS)
    if (principal.kind === 'user') {
      const closed = roomsClosedTo(principal, events)
      // Awaited only when a room's visibility is not at hand: the events of one connection keep
      // their order, as every caller of a room being looked up resumes in the order it came.
      const found = closed instanceof Promise ? await closed : closed
      if (found.length > 0) {
        throw new Forbidden(`${found[0].channel} is a private room: only users whose channels claim matches it may post or delete there`, found)
      }
    }
    if (nc.isClosed()) throw refused(new Unavailable('NATS connection is closed'), events.length)
    if (stopped) throw refused(new Unavailable('this node is shutting down; resend the events to another node'), events.length)
    if (disconnected) throw refused(new Unavailable('the event stream is unavailable (NATS disconnected); retry with the same event ids'), events.length)
    if (inFlight + events.length > config.FANFARE_INGEST_MAX_IN_FLIGHT) {
      throw refused(
        new Unavailable('too many events waiting for the event stream; retry shortly with the same event ids', 'overloaded', {
          inFlight,
          max: config.FANFARE_INGEST_MAX_IN_FLIGHT,
        }),
        events.length,
      )
    }
    const started = performance.now()
    inFlight += events.length
    let settled: PromiseSettledResult<PublishResult>[]
    try {
      settled = await store(events, span)
    } finally {
      inFlight -= events.length
    }
    metrics.ingest.duration.observe((performance.now() - started) / 1000)
    // Stored now: a resend JetStream found stored already (duplicate) is not counted again, or a
    // retry storm after 503s would show as more events coming in.
    for (let i = 0; i < events.length; i++) {
      const r = settled[i]
      if (r.status === 'fulfilled' && !r.value.duplicate) metrics.ingest.ingested(events[i].type, via)
    }
    const failed = settled.filter((r): r is PromiseRejectedResult => r.status === 'rejected')
    if (failed.length === 0) return settled.map((r) => (r as PromiseFulfilledResult<PublishResult>).value)
    log.warn({ err: failed[0].reason, count: events.length, failed: failed.length }, 'publish to JetStream failed')
    // Every id, the generated ones included: a client resending without them would store the
    // stored events again under new ids.
    const results: PublishOutcome[] = settled.map((r, i) => (r.status === 'fulfilled' ? { ...r.value, stored: true } : { id: events[i].id, stored: false }))
    // Its own code: not a blip that a resend soon cures, but an operator's to fix (alerts can tell).
    const full = failed.map((f) => f.reason).find(isStorageFull)
    if (full) {
      const message = `the event stream has no room (JetStream: ${full.description}): an operator must free or add NATS storage, or raise the stream's limits; resend the events with the ids in details.results`
      throw refused(new Unavailable(message, 'storage_full', { results }), events.length)
    }
    // NATS refusing this node a subject (permissions narrowed by a reload while it runs) is its own
    // code: not an outage that a resend soon cures but an operator's to fix, so clients stop
    // resending (the SDK gives such an event up) and alerts can tell. The event was not stored.
    const denied = failed.map((f) => f.reason).find((r): r is PublishDenied => r instanceof PublishDenied)
    if (denied) {
      const message = `${denied.message} (an operator must act); events not stored: resend the events with the ids in details.results once it is granted`
      throw refused(new Unavailable(message, 'publish_denied', { results, subject: denied.subject }), events.length)
    }
    // The acknowledgements' inbox denied: an outage for the client (the events may be stored), but
    // the message says whose to fix it is.
    const acks = failed.map((f) => f.reason).find((r): r is AcksDenied => r instanceof AcksDenied)
    const message = `${acks ? `${acks.message} (an operator must act)` : 'the event stream is unavailable'}; resend the events with the ids in details.results`
    throw refused(new Unavailable(message, 'unavailable', { results }), events.length)
  }
  /**
   * The user's chat posts and deletions in rooms closed to them (private rooms whose channel their
   * claim does not match): a moderator role is no pass into a room the moderator may not read.
   */
  const roomsClosedTo = (user: Principal, events: Omit<StoredEvent, 'at'>[]) => {
    const posts = events.flatMap((e, index) => (e.type === 'chat.message.posted' || e.type === 'chat.message.deleted' ? [{ index, channel: channelOf.chat((e.data as { room: string }).room), room: (e.data as { room: string }).room }] : []))
    const seen = posts.map((p) => rooms.visibilityNowOr(p.room))
    const closed = (visibilities: Visibility[]) =>
      posts.flatMap(({ index, channel }, i) => (maySubscribe(user, channel, visibilities[i]).ok ? [] : [{ index, channel }]))
    if (!seen.some((v) => v instanceof Promise)) return closed(seen as Visibility[])
    return Promise.all(seen).then(closed, (err) => {
      const unavailable = databaseUnavailable(err)
      if (!unavailable) throw err
      // Counted and logged as any other refused publish: an operator sees chat refused while Postgres is away.
      log.warn({ err, count: events.length }, 'cannot check the room of a chat event; publish refused')
      throw refused(new Unavailable(`cannot check the room now: ${unavailable.message}`, unavailable.code), events.length)
    })
  }

  const stop = async () => {
    stopped = true
    const deadline = performance.now() + publishTimeoutMs
    while (inFlight > 0 && performance.now() < deadline) await Bun.sleep(10)
    publisher.close()
  }
  return { publish, stop }
}

/**
 * The message of an invalid_event: the first unknown field when there is one (see
 * validationMessage), else `generic` and the first problem (`/data/board must be 1-64 characters,
 * ...`): a client reading only the message learns what to fix.
 */
function eventMessage(generic: string, problems: (Problem & { index: number })[]): string {
  const unknown = problems.find((p) => p.message === UNKNOWN_FIELD)
  if (unknown) return `unknown field ${unknown.path} in event ${unknown.index}`
  const first = problems[0]
  return first ? `${generic} (event ${first.index}: ${first.path} ${first.message})` : generic
}

/** Checks a whole request; throws on the first kind of problem found, listing every instance. */
function validate(inputs: unknown[], principal: Principal, by: string, joinGraceMs: number): Omit<StoredEvent, 'at'>[] {
  if (inputs.length === 0) throw new Invalid('empty_batch', 'no events to publish')
  if (inputs.length > MAX_BATCH) {
    throw new Invalid('too_many_events', `at most ${MAX_BATCH} events per request`, { max: MAX_BATCH, got: inputs.length })
  }
  // The WebSocket layer hands us raw frames, so the envelope is checked here too.
  const shape = inputs.flatMap((e, index) =>
    inputChecker.Check(e) ? [] : validationProblems(inputChecker.Errors(e), 5).map((p) => ({ index, ...p })),
  )
  if (shape.length > 0) throw new Invalid('invalid_event', eventMessage('malformed event', shape), shape)
  const typed = inputs as EventInput[]

  const unknown = typed.flatMap((e, index) => (isEventType(e.type) ? [] : [{ index, type: e.type }]))
  if (unknown.length > 0) {
    throw new Invalid('unknown_event_type', `unknown event type ${JSON.stringify(unknown[0].type)}`, unknown)
  }
  // No credential, as POST /v1/events answers a caller without one (401 there): unauthorized, not
  // forbidden, which is for a credential that may not publish the type.
  if (principal.kind === 'anonymous') throw new Unauthorized('anonymous clients may not publish: send { "op": "auth", "token" } or connect with a token')
  const denied = typed.flatMap((e, index) => (mayPublish(principal, e.type as EventType) ? [] : [{ index, type: e.type }]))
  if (denied.length > 0) throw new Forbidden(`this ${principal.kind} may not publish ${denied[0].type}: only ${publishersOf(denied[0].type as EventType)} may`, denied)
  if (principal.kind === 'user') {
    // Users post as themselves: `user` is their sub and `name` their token's (filled in when left
    // out; anything else is refused, never silently replaced).
    const impersonating: { index: number; user?: unknown; name?: unknown }[] = []
    for (const [index, e] of typed.entries()) {
      if (e.type !== 'chat.message.posted') continue
      const { user, name, ...rest } = e.data
      if (user !== undefined && user !== principal.id) impersonating.push({ index, user })
      else if (name !== undefined && name !== principal.name) impersonating.push({ index, name })
      e.data = { ...rest, user: principal.id, ...(principal.name ? { name: principal.name } : {}) }
    }
    if (impersonating.length > 0) {
      throw new Forbidden(`a user posts chat as themselves (${principal.id}${principal.name ? `, ${principal.name}` : ''}): the user and display name come from the token`, impersonating)
    }
    // A player leaves as themselves (the event's principal): naming another player, or the API
    // nodes' reason, is refused, never applied as the sender's own leave.
    const leaving: { index: number; player?: unknown; reason?: unknown }[] = []
    for (const [index, e] of typed.entries()) {
      if (e.type !== 'match.leave') continue
      const { player, reason } = e.data
      if (player !== undefined && player !== principal.id) leaving.push({ index, player })
      else if (reason !== undefined && reason !== 'left') leaving.push({ index, reason })
    }
    if (leaving.length > 0) {
      const first = leaving[0]
      throw new Forbidden(
        'player' in first
          ? `a player leaves a match as themselves (${principal.id}): another player's seat is given up only by the API nodes, after its grace`
          : `a player leaves a match as themselves (${principal.id}), with no reason or "left": ${JSON.stringify(first.reason)} is the API nodes' to give`,
        leaving,
      )
    }
    // A join carries the node's join grace (how long the seat waits for the player's first
    // connection); a player choosing their own would squat seats again.
    const graced: { index: number; graceMs: unknown }[] = []
    for (const [index, e] of typed.entries()) {
      if (e.type !== 'match.join') continue
      const { graceMs, ...rest } = e.data
      if (graceMs !== undefined) graced.push({ index, graceMs })
      e.data = { ...rest, graceMs: joinGraceMs }
    }
    if (graced.length > 0) throw new Forbidden('the join grace (graceMs) is set by the API (FANFARE_MATCH_JOIN_GRACE_MS), not by the player', graced)
  }

  const invalid = typed.flatMap((e, index) => admitData(e.type as EventType, e.data).map((p) => ({ index, ...p })))
  if (invalid.length > 0) throw new Invalid('invalid_event', eventMessage('event data does not match its type', invalid), invalid)

  const seen = new Set<string>()
  const dupes: { index: number; id: string }[] = []
  const events = typed.map((e, index) => {
    const id = e.id ?? newEventId()
    if (seen.has(id)) dupes.push({ index, id })
    seen.add(id)
    const type = e.type as EventType
    return { id, by, type, v: contracts[type].version, data: e.data } as Omit<StoredEvent, 'at'>
  })
  if (dupes.length > 0) throw new Invalid('duplicate_id_in_batch', 'an event id appears twice in one request', dupes)
  return events
}
