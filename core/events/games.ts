import { Type, type Static } from '@sinclair/typebox'
import { rule } from '../validation'
import { ActorId, FiniteNumber, Name, STORABLE_TEXT } from './fields'

/** What a match property's name is: the rule of a Name. */
const PROPERTY_NAME = new RegExp(Name.pattern as string)

/**
 * Free-form match settings a game attaches: up to 20 names with short scalar values (text Postgres
 * can store). The key pattern checks only the values of keys that match it: JSON Schema's
 * `patternProperties` lets any other key through with any value (`{ "a.b": { ... } }`), so names are
 * checked by badPropertyOf, where the API admits an event.
 */
export const MatchProperties = Type.Record(
  Type.String({ pattern: PROPERTY_NAME.source }),
  Type.Union(
    [Type.String({ maxLength: 200, pattern: STORABLE_TEXT, ...rule('must be at most 200 characters with no NUL (nor an unpaired surrogate)') }), Type.Number({ minimum: -1e15, maximum: 1e15 }), Type.Boolean()],
    // A union's own error says only "Expected union value".
    rule('must be text of at most 200 characters (no NUL, nor an unpaired surrogate), a number within ±1e15, or true or false'),
  ),
  { maxProperties: 20 },
)

/**
 * Property names that are JavaScript object internals. A plain object that holds one as a key is
 * a trap for every reader: `obj[k] = v` with `__proto__` sets the prototype instead, response
 * schemas and cleaners drop it (GET answered without it), `props.constructor` is always "there".
 * The API refuses them in new events (422); events stored before lose them on projection.
 */
export const RESERVED_PROPERTY_NAMES: ReadonlySet<string> = new Set(['__proto__', 'constructor', 'prototype'])

/** Whether a match may hold a property of this name: a Name, and not a JavaScript object internal. */
export const isPropertyName = (name: string): boolean => PROPERTY_NAME.test(name) && !RESERVED_PROPERTY_NAMES.has(name)

/** The first property of a match's properties whose name it may not hold (isPropertyName), with why; undefined if none. */
export function badPropertyOf(properties: Record<string, unknown> | undefined): { name: string; message: string } | undefined {
  const name = properties ? Object.keys(properties).find((k) => !isPropertyName(k)) : undefined
  if (name === undefined) return undefined
  if (RESERVED_PROPERTY_NAMES.has(name)) return { name, message: `${name} is a JavaScript object internal: not a property name` }
  return { name, message: `property names must be 1-64 characters, each a letter (A-Z, a-z), a digit, _ or -` }
}

/** A match (or lobby) opens for players. Key: match. Game servers (keys with the scope). */
export const MatchCreated = Type.Object(
  { match: Name, mode: Name, maxPlayers: Type.Integer({ minimum: 2, maximum: 100 }), properties: Type.Optional(MatchProperties) },
  { additionalProperties: false, $id: 'match.created@1' },
)
export type MatchCreated = Static<typeof MatchCreated>

/**
 * A player asks for a seat. The player is the event's principal (a user's `sub`). Key: match.
 * `graceMs` is stamped by the API node (its FANFARE_MATCH_JOIN_GRACE_MS; a user may not set it):
 * the seat is given up that long after the join unless the player connects to `match:<id>` first.
 * Joins stored before it existed have none (their seats started connected).
 */
export const MatchJoin = Type.Object(
  { match: Name, graceMs: Type.Optional(Type.Integer({ minimum: 0, maximum: 86_400_000 })) },
  { additionalProperties: false, $id: 'match.join@1' },
)
export type MatchJoin = Static<typeof MatchJoin>

/**
 * A player gives up their seat: a user leaving (the player is their `sub`), or the API nodes for a
 * player who stayed disconnected past the grace (`player` and `reason: "disconnected"`) or whose
 * credential was revoked (`reason: "revoked"`: the seat is given up at once). Key: match.
 */
export const MatchLeave = Type.Object(
  { match: Name, player: Type.Optional(ActorId), reason: Type.Optional(Type.Union([Type.Literal('left'), Type.Literal('disconnected'), Type.Literal('revoked')])) },
  { additionalProperties: false, $id: 'match.leave@1' },
)
export type MatchLeave = Static<typeof MatchLeave>

/** A seated player is ready. Key: match. */
export const MatchReady = Type.Object({ match: Name }, { additionalProperties: false, $id: 'match.ready@1' })
export type MatchReady = Static<typeof MatchReady>

/** The game server starts the match. Key: match. */
export const MatchStart = Type.Object({ match: Name }, { additionalProperties: false, $id: 'match.start@1' })
export type MatchStart = Static<typeof MatchStart>

/**
 * The game server reports the results; those of the match's lineup (the players seated when it
 * started, leavers included) become scores on the mode's board, once. Results naming anyone else
 * are ignored and listed in the match's `ignored`. Key: match.
 */
export const MatchFinish = Type.Object(
  { match: Name, results: Type.Array(Type.Object({ player: ActorId, score: FiniteNumber }, { additionalProperties: false }), { minItems: 1, maxItems: 100 }) },
  { additionalProperties: false, $id: 'match.finish@1' },
)
export type MatchFinish = Static<typeof MatchFinish>

/** The game server calls the match off. Key: match. */
export const MatchAbort = Type.Object({ match: Name }, { additionalProperties: false, $id: 'match.abort@1' })
export type MatchAbort = Static<typeof MatchAbort>

/**
 * The API nodes saw a player's connections to `match:<id>` all close, on every node (`connected:
 * false`), or one open again (`connected: true`). `graceMs` (the nodes' FANFARE_MATCH_GRACE_MS) is
 * how long the seat is kept: carried in the event, so a rebuild decides the expiry the same way
 * whatever the config is then. Key: match.
 */
export const MatchPlayerConnection = Type.Object(
  { match: Name, player: ActorId, connected: Type.Boolean(), graceMs: Type.Optional(Type.Integer({ minimum: 0, maximum: 86_400_000 })) },
  { additionalProperties: false, $id: 'match.player.connection@1' },
)
export type MatchPlayerConnection = Static<typeof MatchPlayerConnection>
