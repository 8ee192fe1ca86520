import { Type, type Static, type TSchema } from '@sinclair/typebox'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import { ChatMessageDeleted, ChatMessagePosted } from './chat'
import { EventId } from './fields'
import { ScoreSubmitted } from './scores'
import { MatchAbort, MatchCreated, MatchFinish, MatchJoin, MatchLeave, MatchPlayerConnection, MatchReady, MatchStart, badPropertyOf } from './games'
import { isEmojiToAdmit, isOneEmoji, PollClosed, PollOpened, PollVoted, ReactionsBatched, repeatedOptionOf, ReactionSent, StreamEnded, StreamStarted, StreamUpdated, StreamViewersSampled, visibleText } from './live'
import { distinctProblems, MAX_PROBLEMS, parseDateTime, problemMessage, takeFirst } from '../validation'
import { parseChannel, subjectName } from '../channels'

export { ChatMessageDeleted, ChatMessagePosted } from './chat'
export { ScoreSubmitted } from './scores'
export * from './live'
export * from './games'
export * from './fields'

type Contract<T extends TSchema> = {
  /** Schema version written into every stored event of this type. */
  version: number
  schema: T
  /** The ordering key: events with the same key are applied in publish order. */
  key: (data: Static<T>) => string
  /** What the schema cannot say (one emoji, at least one field): a problem, or undefined. */
  check?: (data: Static<T>) => DataProblem | undefined
  /**
   * What new events must also satisfy (rules tightened after events were stored under looser ones):
   * checked by the API at ingest (admitData), never against stored events, which still apply.
   */
  admit?: (data: Static<T>) => DataProblem | undefined
}

const contract = <T extends TSchema>(c: Contract<T>) => c

/**
 * The first of `fields` (those given) whose text a viewer cannot read (only spaces or characters
 * that show as nothing, see visibleText), as a problem: such text is refused at the door, like a
 * blank poll question.
 */
function blankAt<D extends object>(data: D, fields: (keyof D & string)[]): DataProblem | undefined {
  const field = fields.find((f) => typeof data[f] === 'string' && visibleText(data[f] as string) === '')
  return field === undefined ? undefined : { path: `/data/${field}`, message: 'is blank' }
}

/**
 * Every event type Fanfare accepts. The part of the type before the first dot names the
 * projection area that consumes it (`score.*` → leaderboards, `chat.*` → chat). Who may publish
 * each is the API's table (api/src/auth/permissions.ts).
 */
export const contracts = {
  'score.submitted': contract({
    version: 1,
    schema: ScoreSubmitted,
    key: (d) => `${d.board}/${d.player}`,
  }),
  'chat.message.posted': contract({
    version: 1,
    schema: ChatMessagePosted,
    key: (d) => d.room,
    // A message that shows as nothing is an empty line for the whole room; stored ones still apply.
    admit: (d) => blankAt(d, ['text']),
  }),
  'chat.message.deleted': contract({
    version: 1,
    schema: ChatMessageDeleted,
    key: (d) => d.room,
  }),
  'stream.started': contract({ version: 1, schema: StreamStarted, key: (d) => d.stream, admit: (d) => blankAt(d, ['title', 'category']) }),
  'stream.updated': contract({
    version: 1,
    schema: StreamUpdated,
    key: (d) => d.stream,
    check: (d) => (d.title === undefined && d.category === undefined ? { path: '/data', message: 'give a title or a category' } : undefined),
    admit: (d) => blankAt(d, ['title', 'category']),
  }),
  'stream.ended': contract({ version: 1, schema: StreamEnded, key: (d) => d.stream }),
  'stream.viewers.sampled': contract({ version: 1, schema: StreamViewersSampled, key: (d) => d.stream }),
  'reaction.sent': contract({
    version: 1,
    schema: ReactionSent,
    key: (d) => d.stream,
    check: (d) => (isOneEmoji(d.emoji) ? undefined : { path: '/data/emoji', message: 'must be one emoji' }),
    admit: (d) => (isEmojiToAdmit(d.emoji) ? undefined : { path: '/data/emoji', message: 'must be one emoji' }),
  }),
  'reaction.batched': contract({
    version: 1,
    schema: ReactionsBatched,
    key: (d) => d.stream,
    check: (d) => {
      const i = d.reactions.findIndex((r) => !isOneEmoji(r.emoji))
      return i < 0 ? undefined : { path: `/data/reactions/${i}/emoji`, message: 'must be one emoji' }
    },
  }),
  'poll.opened': contract({
    version: 1,
    schema: PollOpened,
    key: (d) => d.poll,
    check: (d) =>
      d.closesAt !== undefined && parseDateTime(d.closesAt) === undefined
        ? { path: '/data/closesAt', message: 'must be an ISO 8601 date-time with a time zone naming a real instant of the years 1-9999' }
        : undefined,
    admit: (d) => {
      // Text a viewer cannot read (only spaces or zero-width characters) is refused like a repeat; stored polls still apply.
      if (visibleText(d.question) === '') return { path: '/data/question', message: 'is blank' }
      const blank = d.options.findIndex((o) => visibleText(o) === '')
      if (blank >= 0) return { path: `/data/options/${blank}`, message: 'is blank' }
      const repeat = repeatedOptionOf(d.options)
      if (!repeat) return undefined
      // Name both options: a repeat in another case or form (Ａ for A) is not plain to see.
      const earlier = `option ${repeat.earlier} (${JSON.stringify(d.options[repeat.earlier])})`
      const same = visibleText(d.options[repeat.index]) === visibleText(d.options[repeat.earlier])
      return {
        path: `/data/options/${repeat.index}`,
        message: same ? `repeats ${earlier}` : `repeats ${earlier}: options are compared in any case and character form (full-width, ligatures, superscripts)`,
      }
    },
  }),
  'poll.voted': contract({ version: 1, schema: PollVoted, key: (d) => d.poll }),
  'poll.closed': contract({ version: 1, schema: PollClosed, key: (d) => d.poll }),
  'match.created': contract({
    version: 1,
    schema: MatchCreated,
    key: (d) => d.match,
    // Names refused here are left out of events stored before (the matches projection), not dead-lettered.
    admit: (d) => {
      const bad = badPropertyOf(d.properties)
      return bad === undefined ? undefined : { path: `/data/properties/${bad.name.replace(/~/g, '~0').replace(/\//g, '~1')}`, message: bad.message }
    },
  }),
  'match.join': contract({ version: 1, schema: MatchJoin, key: (d) => d.match }),
  'match.leave': contract({ version: 1, schema: MatchLeave, key: (d) => d.match }),
  'match.ready': contract({ version: 1, schema: MatchReady, key: (d) => d.match }),
  'match.start': contract({ version: 1, schema: MatchStart, key: (d) => d.match }),
  'match.finish': contract({
    version: 1,
    schema: MatchFinish,
    key: (d) => d.match,
    check: (d) => (new Set(d.results.map((r) => r.player)).size === d.results.length ? undefined : { path: '/data/results', message: 'each player once' }),
  }),
  'match.abort': contract({ version: 1, schema: MatchAbort, key: (d) => d.match }),
  'match.player.connection': contract({ version: 1, schema: MatchPlayerConnection, key: (d) => d.match }),
}

export type EventType = keyof typeof contracts
export const eventTypes = Object.keys(contracts) as EventType[]

/** The data of each event type, by type. */
export type EventData = { [K in EventType]: Static<(typeof contracts)[K]['schema']> }

/**
 * An event as a client publishes it, typed by its contract (clients such as the SDK type their
 * `publish` with it). `id` is optional: without one the API makes one, and a resend is a new event.
 */
export type PublishedEvent = { [K in EventType]: { id?: string; type: K; data: EventData[K] } }[EventType]

/** An event as clients send it. */
export const EventInput = Type.Object(
  {
    id: Type.Optional(EventId),
    type: Type.String({ minLength: 1, maxLength: 64 }),
    data: Type.Record(Type.String(), Type.Unknown()),
  },
  { additionalProperties: false },
)
export type EventInput = Static<typeof EventInput>

/**
 * An event as stored in JetStream (the message body). `id` is the id the client gave (or the
 * UUIDv7 the API made); `by` is its publisher's principal (see Caller), '' in events stored before
 * principals were recorded.
 */
export type StoredEvent = {
  [K in EventType]: { id: string; by: string; type: K; v: number; data: EventData[K]; at: string }
}[EventType]

/**
 * The JetStream de-duplication id (`Nats-Msg-Id`) of an event: `<by>/<id>`. Ids are de-duplicated
 * per publisher; an event id has no '/', so the last '/' splits the pair: two different pairs
 * never give the same string.
 */
export const dedupIdOf = (event: Pick<StoredEvent, 'by' | 'id'>): string => `${event.by}/${event.id}`

/**
 * The `Nats-Msg-Id` an API node stores a client's event with, at the hub (`edgeDomain` undefined)
 * or at an edge site. An edge's events are sourced into the hub's event stream with their msg id,
 * and on nats-server 2.9 one that the hub's window takes for a duplicate stalls that edge's whole
 * source for the window (docs/design.md, Edge sites): so no edge msg id may equal one the hub
 * stores itself. At an edge: `<by>/<id>@<domain>`. At the hub: `<by>/<id>`, and `<by>/<id>@` when
 * the id holds an '@' (an id may: `m1@<domain>` sent to the hub would otherwise be the same
 * caller's `m1` sent to that edge, and one caller could stall every event of the site). After the
 * last '/' a hub msg id either holds no '@' or ends with one; an edge's holds one and ends with its
 * domain, which holds none.
 */
export const siteMsgIdOf = (event: Pick<StoredEvent, 'by' | 'id'>, edgeDomain: string | undefined): string =>
  edgeDomain !== undefined ? `${dedupIdOf(event)}@${edgeDomain}` : event.id.includes('@') ? `${dedupIdOf(event)}@` : dedupIdOf(event)

const checkers = Object.fromEntries(
  eventTypes.map((t) => [t, TypeCompiler.Compile(contracts[t].schema)]),
) as unknown as Record<EventType, ReturnType<typeof TypeCompiler.Compile>>

export const isEventType = (type: string): type is EventType => Object.hasOwn(contracts, type)

/** One problem with an event's data: where, and what is wrong. */
export type DataProblem = { path: string; message: string }

/** Checks an event's data against its type's schema; returns the first problems (empty when valid). */
export function checkData(type: EventType, data: unknown): DataProblem[] {
  const checker = checkers[type]
  if (!checker.Check(data)) return distinctProblems(takeFirst(checker.Errors(data), MAX_PROBLEMS).map((e) => ({ path: `/data${e.path}`, message: problemMessage(e) })))
  const problem = (contracts[type] as { check?: (d: unknown) => DataProblem | undefined }).check?.(data)
  return problem ? [problem] : []
}

/** Checks a new event's data (checkData, then its type's `admit` rule): what the API accepts. */
export function admitData(type: EventType, data: unknown): DataProblem[] {
  const problems = checkData(type, data)
  if (problems.length > 0) return problems
  const problem = (contracts[type] as { admit?: (d: unknown) => DataProblem | undefined }).admit?.(data)
  return problem ? [problem] : []
}

/** The ordering key of a valid event. */
export function keyOf(event: Pick<StoredEvent, 'type' | 'data'>): string {
  return (contracts[event.type].key as (d: unknown) => string)(event.data)
}

const utf8 = new TextEncoder()

/** Stable 32-bit FNV-1a hash of a key's UTF-8 bytes. Never change it: partitions depend on it. */
export function hashKey(key: string): number {
  let h = 0x811c9dc5
  for (const byte of utf8.encode(key)) {
    h ^= byte
    h = Math.imul(h, 0x01000193)
  }
  return h >>> 0
}

export const partitionOf = (key: string, partitions: number) => hashKey(key) % partitions

/** Subject names: the one place that knows how Fanfare lays out NATS subjects. */
export const subjects = {
  /** `<prefix>.ev.<partition>.<type>` e.g. `fanfare.ev.3.score.submitted` */
  event: (prefix: string, partition: number, type: string) => `${prefix}.ev.${partition}.${type}`,
  allEvents: (prefix: string) => `${prefix}.ev.>`,
  /** What one projection consumes of one partition, e.g. `fanfare.ev.3.score.>` */
  projectionFilter: (prefix: string, partition: number, area: string) => `${prefix}.ev.${partition}.${area}.>`,
  /** `<prefix>.changes.<kind>.<name>` for channel `<kind>:<name>` */
  change: (prefix: string, channel: string) => {
    const parsed = parseChannel(channel)
    if (!parsed) throw new Error(`not a channel: ${channel}`)
    return `${prefix}.changes.${parsed.kind}.${subjectName(parsed.kind, parsed.name)}`
  },
  /**
   * `<prefix>.changes.<kind>._batch.<partition>`: the runs of one batch of a partition for channels
   * of one kind, as one message (live batches). Five tokens: never a channel's subject.
   */
  changeBatch: (prefix: string, kind: string, partition: number) => `${prefix}.changes.${kind}._batch.${partition}`,
  /** Every channel of one kind, e.g. `fanfare.changes.chat.>` */
  changesOfKind: (prefix: string, kind: string) => `${prefix}.changes.${kind}.>`,
  /** Stream sequence → partition parse helper for admin views. */
  partitionOfSubject: (subject: string) => Number(subject.split('.')[2]),
}

/** Result of decoding a stored message: the event, or why it can never apply. */
export type Decoded = { ok: true; event: StoredEvent } | { ok: false; reason: string }

/** Decodes and validates a message body from the event stream. Never throws. */
export function decodeEvent(body: Uint8Array | string): Decoded {
  let parsed: unknown
  try {
    parsed = JSON.parse(typeof body === 'string' ? body : new TextDecoder().decode(body))
  } catch {
    return { ok: false, reason: 'body is not JSON' }
  }
  if (typeof parsed !== 'object' || parsed === null) return { ok: false, reason: 'body is not an object' }
  const e = parsed as Record<string, unknown>
  if (typeof e.id !== 'string' || e.id.length === 0) return { ok: false, reason: 'missing id' }
  if (typeof e.type !== 'string' || !isEventType(e.type)) return { ok: false, reason: `unknown event type ${JSON.stringify(e.type)}` }
  if (e.v !== contracts[e.type].version) return { ok: false, reason: `unsupported version ${JSON.stringify(e.v)} of ${e.type}` }
  const problems = checkData(e.type, e.data)
  if (problems.length > 0) return { ok: false, reason: `invalid data: ${problems.map((p) => `${p.path} ${p.message}`).join('; ')}` }
  const by = typeof e.by === 'string' ? e.by : ''
  return { ok: true, event: { id: e.id, by, type: e.type, v: e.v, data: e.data, at: typeof e.at === 'string' ? e.at : '' } as StoredEvent }
}
