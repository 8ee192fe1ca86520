import { Type, type Static } from '@sinclair/typebox'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import { Channel } from '../../../core/channels'
import { EventInput } from '../../../core/events'
import { distinctProblems, firstUnknownField, MAX_JSON_DEPTH, MAX_PROBLEMS, nestedDeeperThan, problemMessage, schemaSentence, takeFirst } from '../../../core/validation'
import { AppError, databaseUnavailable } from '../errors'
import type { ChatChange, LeaderboardChange, MatchChange, MatchView, PollChange, PollView, ReactionsChange, StreamChange, UserChange } from '../../../core/channels'
import type { BoardSnapshot } from '../modules/leaderboards/model'
import type { RoomSnapshot } from '../modules/rooms/service'
import type { StreamSnapshot } from '../modules/streams/service'
import type { ReactionTotals } from '../modules/reactions/model'
import type { PresenceSnapshot, PresenceUpdate } from '../presence/feed'

/**
 * Client → server frames of the WebSocket protocol (JSON text frames). A field a frame does not
 * declare is refused (invalid_frame naming it), as on REST: a misspelt `since` must not quietly
 * turn a resume into a fresh snapshot.
 */
const Ref = Type.Optional(Type.String({ maxLength: 64 }))
const strict = { additionalProperties: false } as const

export const PublishFrame = Type.Object(
  {
    op: Type.Literal('publish'),
    ref: Ref,
    event: EventInput,
    /** W3C trace context (`00-<trace id>-<span id>-<flags>`): the event joins the client's trace. */
    traceparent: Type.Optional(Type.String({ maxLength: 128 })),
  },
  strict,
)
export const SubscribeFrame = Type.Object(
  {
    op: Type.Literal('subscribe'),
    ref: Ref,
    channel: Channel,
    /** Resume after this version (the last one the client has) instead of starting from a snapshot. */
    since: Type.Optional(Type.Integer({ minimum: 0 })),
    /** The epoch of `since`, from the frame that carried it. */
    epoch: Type.Optional(Type.String({ maxLength: 64 })),
    /** W3C trace context: the subscribe (its access check, its snapshot or history reads) joins the client's trace. */
    traceparent: Type.Optional(Type.String({ maxLength: 128 })),
  },
  strict,
)
export const UnsubscribeFrame = Type.Object({ op: Type.Literal('unsubscribe'), ref: Ref, channel: Channel }, strict)
/** A user token (the first frame of a browser, which cannot set headers; or a refreshed token). */
export const AuthFrame = Type.Object({ op: Type.Literal('auth'), ref: Ref, token: Type.String({ minLength: 1, maxLength: 8192 }) }, strict)
/**
 * A liveness probe: the server answers `pong` with the same ref. Browsers cannot see WebSocket
 * pings, so a client that slept (a laptop lid, a phone in a pocket) asks this way whether its
 * socket still reaches the server before trusting it.
 */
export const PingFrame = Type.Object({ op: Type.Literal('ping'), ref: Ref }, strict)
export const ClientFrame = Type.Union([PublishFrame, SubscribeFrame, UnsubscribeFrame, AuthFrame, PingFrame])
export type ClientFrame = Static<typeof ClientFrame>

const frameChecks = {
  publish: TypeCompiler.Compile(PublishFrame),
  subscribe: TypeCompiler.Compile(SubscribeFrame),
  unsubscribe: TypeCompiler.Compile(UnsubscribeFrame),
  auth: TypeCompiler.Compile(AuthFrame),
  ping: TypeCompiler.Compile(PingFrame),
}

export type ErrorBody = { code: string; message: string; details?: unknown }

/** How an unknown op is named back to the client: short strings as they are, other values by kind. */
function describeOp(op: unknown): string {
  if (typeof op === 'string') return JSON.stringify(op.length > 32 ? `${op.slice(0, 32)}…` : op)
  if (op === undefined) return '(none)'
  if (op === null) return 'null'
  return Array.isArray(op) ? '(an array)' : `(a ${typeof op})`
}

/**
 * Parses one incoming frame (Elysia may already have parsed JSON text). Never throws: a frame
 * nested past MAX_JSON_DEPTH is refused before anything walks it recursively.
 */
export function parseFrame(raw: unknown): { ok: true; frame: ClientFrame } | { ok: false; ref?: string; error: ErrorBody } {
  if (raw instanceof ArrayBuffer || ArrayBuffer.isView(raw)) {
    return { ok: false, error: { code: 'bad_frame', message: 'frames must be JSON text frames, not binary' } }
  }
  let value = raw
  if (typeof raw === 'string') {
    try {
      value = JSON.parse(raw)
    } catch {
      return { ok: false, error: { code: 'bad_frame', message: 'frames must be JSON objects' } }
    }
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return { ok: false, error: { code: 'bad_frame', message: 'frames must be JSON objects' } }
  }
  const v = value as Record<string, unknown>
  const ref = typeof v.ref === 'string' ? v.ref.slice(0, 64) : undefined
  if (nestedDeeperThan(value, MAX_JSON_DEPTH)) {
    return { ok: false, ref, error: { code: 'bad_frame', message: `frames may nest at most ${MAX_JSON_DEPTH} levels` } }
  }
  const op = v.op
  if (typeof op !== 'string' || !Object.hasOwn(frameChecks, op)) {
    return { ok: false, ref, error: { code: 'unknown_op', message: `unknown op ${describeOp(op)}; expected auth, publish, subscribe, unsubscribe or ping` } }
  }
  const check = frameChecks[op as keyof typeof frameChecks]
  if (!check.Check(v)) {
    const errors = takeFirst(check.Errors(v), MAX_PROBLEMS)
    const details = distinctProblems(errors.map((e) => ({ path: e.path, message: problemMessage(e) })))
    const unknown = firstUnknownField(details)
    // A schema's own `error` (as REST answers it: see Channel) says more than "malformed".
    const custom = errors.map((e) => schemaSentence(e)).find((m) => m !== undefined)
    const message = unknown !== undefined ? `unknown field ${unknown} in the ${op} frame` : (custom ?? `malformed ${op} frame`)
    return { ok: false, ref, error: { code: 'invalid_frame', message, details } }
  }
  return { ok: true, frame: v as ClientFrame }
}

/**
 * Turns any thrown error into the protocol's error body (AppErrors keep their code). A database
 * error a retry may cure is `database_unavailable`, as REST answers it (a room's visibility or an
 * API key read while Postgres is away), not `internal`.
 */
export function errorBody(err: unknown): ErrorBody {
  const e = err instanceof AppError ? err : databaseUnavailable(err)
  if (e) return { code: e.code, message: e.message, ...(e.details === undefined ? {} : { details: e.details }) }
  return { code: 'internal', message: 'internal error' }
}

/**
 * Server → client frames. Every frame the server sends is one of these; clients (client/) type
 * themselves from this union, so a change here shows up in the SDK's type check.
 */
export type ServerFrame =
  /** A token was accepted (first identity, or a refresh of the same one). */
  | { op: 'authed'; ref?: string; principal: string; expiresAt?: string; dedupWindowMs: number }
  /** A published event is stored (or was already: `duplicate`). */
  | { op: 'ack'; ref?: string; id: string; seq: number; duplicate: boolean }
  /** A command failed (`ref`), or a subscription ended (`channel`); `retryAfterMs` on rate_limited. */
  | { op: 'error'; ref?: string; channel?: string; error: ErrorBody & { retryAfterMs?: number } }
  /** A channel's whole state at `version`: replace yours (`resync`: it replaces what you had). */
  | { op: 'snapshot'; channel: string; version: number; epoch: string; data: unknown; resync?: true }
  /** A resume was accepted: the missed updates follow. */
  | { op: 'subscribed'; channel: string; version: number; epoch: string; recovered: true }
  /** Versions `from` (default: `version`) to `version` of a channel, merged into one frame. */
  | { op: 'update'; channel: string; from?: number; version: number; epoch: string; data: unknown }
  | { op: 'unsubscribed'; ref?: string; channel: string; wasSubscribed?: false; reason?: 'forbidden' }
  /** The user token expires soon: send a fresh one in an `auth` frame. */
  | { op: 'token_expiring'; expiresAt: string }
  /**
   * Nothing was refused, but a budget this socket's commands are charged to is nearly spent: slow
   * down, or the next commands are refused `rate_limited` (then, kept up, the socket is closed 4029).
   * Once, until the budget is back at half.
   */
  | { op: 'warning'; warning: { code: 'rate_limit_near'; message: string; remaining: number; burst: number; perSecond: number } }
  | { op: 'pong'; ref?: string }

/** What a snapshot's `data` holds, per channel kind. */
export type ChannelSnapshots = {
  leaderboard: BoardSnapshot
  chat: RoomSnapshot
  user: { user: string }
  stream: StreamSnapshot
  /** null: the poll never opened. */
  poll: PollView | null
  reactions: ReactionTotals
  /** null: no such match (yet): its `created` update brings it. */
  match: MatchView | null
  presence: PresenceSnapshot
}

/** What an update's `data` holds, per channel kind (user channels: personal notices). */
export type ChannelUpdates = {
  leaderboard: LeaderboardChange
  chat: ChatChange
  user: UserChange
  stream: StreamChange
  poll: PollChange
  reactions: ReactionsChange
  match: MatchChange
  presence: PresenceUpdate
}
