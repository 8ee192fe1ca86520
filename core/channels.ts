import { Type, type Static } from '@sinclair/typebox'
import { Name, NAME_CHARS, NAME_IN_WORDS } from './events/fields'

/**
 * Live channels. A channel's version rises by exactly one for every committed change, and every
 * change reaches subscribers as a ChangeNotice; workers publish them in runs (ChangeRun) on
 * `<prefix>.changes.<kind>.<name>`.
 */
export const channelKinds = ['leaderboard', 'chat', 'user', 'stream', 'poll', 'reactions', 'match'] as const
export type ChannelKind = (typeof channelKinds)[number]

/**
 * `leaderboard:<board>`, `chat:<room>`, `stream:<stream>`, `poll:<poll>`, `reactions:<stream>`, `match:<match>`
 * (names of letters, digits, `_` and `-`), or `user:<user id>` (a user's private channel: the id is
 * a token's `sub`, 1-128 characters without spaces).
 */
const CHANNEL_PATTERN = `^(?:(?:leaderboard|chat|stream|poll|reactions|match):${NAME_CHARS}|user:(?:[^\\s\\u0000\\uD800-\\uDFFF]|[\\uD800-\\uDBFF][\\uDC00-\\uDFFF]){1,128})$`
/** `presence:<channel>`: who is in a tracked channel (a room, a stream, a match). */
const PRESENCE_PATTERN = `^presence:(?:chat|stream|match):${NAME_CHARS}$`
/**
 * A channel a client may subscribe to: one of the read models' channels, or a presence channel.
 * `error` (the option Elysia's schemas use for their message, read by the WebSocket frame check
 * too) says which channels exist: the pattern alone, quoted back, told a person nothing.
 */
export const Channel = Type.String({
  pattern: `${CHANNEL_PATTERN}|${PRESENCE_PATTERN}`,
  maxLength: 261,
  error:
    'channel must be leaderboard:<board>, chat:<room>, stream:<stream>, poll:<poll>, reactions:<stream> or match:<match> ' +
    `(${NAME_IN_WORDS}), user:<user id>, or presence: followed by a chat:, stream: or match: channel`,
})
export type Channel = Static<typeof Channel>

export const channelOf = {
  leaderboard: (board: string) => `leaderboard:${board}`,
  chat: (room: string) => `chat:${room}`,
  user: (id: string) => `user:${id}`,
  stream: (stream: string) => `stream:${stream}`,
  poll: (poll: string) => `poll:${poll}`,
  reactions: (stream: string) => `reactions:${stream}`,
  match: (match: string) => `match:${match}`,
}

const channelRe = new RegExp(CHANNEL_PATTERN)
const presenceRe = new RegExp(PRESENCE_PATTERN)

/** The channel a `presence:<channel>` names; undefined for any other channel. */
export function presenceTarget(channel: string): string | undefined {
  return presenceRe.test(channel) ? channel.slice('presence:'.length) : undefined
}
export function parseChannel(channel: string): { kind: ChannelKind; name: string } | undefined {
  if (channel.length > 261 || !channelRe.test(channel)) return undefined
  const colon = channel.indexOf(':')
  return { kind: channel.slice(0, colon) as ChannelKind, name: channel.slice(colon + 1) }
}

/**
 * The subject token of a channel's name: the name itself for boards and rooms (subject-safe by
 * their pattern), base64url of its UTF-8 for users (a user id may hold `.`, `*` or `>`).
 */
export function subjectName(kind: ChannelKind, name: string): string {
  return kind === 'user' ? `u${Buffer.from(name, 'utf8').toString('base64url')}` : name
}

/** What changed in a leaderboard: one player's new standing. */
export const LeaderboardChange = Type.Object({
  player: Type.String(),
  score: Type.Number(),
  previous: Type.Union([Type.Number(), Type.Null()]),
  /** The period the score counts in (boards with a reset); absent on boards without periods. */
  period: Type.Optional(Type.String()),
  /**
   * The stream sequence of the event that reached this score: equal scores rank by it (who got
   * there first), so a client can place the player among ties exactly. Absent in changes stored
   * before it was added.
   */
  reachedSeq: Type.Optional(Type.Number()),
})
export type LeaderboardChange = Static<typeof LeaderboardChange>

export const ChatMessage = Type.Object({
  id: Type.String(),
  room: Name,
  user: Type.String(),
  name: Type.Optional(Type.String()),
  text: Type.String(),
  postedAt: Type.String({ description: 'ISO 8601' }),
})
export type ChatMessage = Static<typeof ChatMessage>

/** What changed in a chat room. */
export type ChatChange = { kind: 'posted'; message: ChatMessage } | { kind: 'deleted'; messageId: string }

/**
 * A stream's state as `GET /v1/streams/:stream` and the `stream:<id>` channel show it (the open
 * poll aside). Times are ISO 8601; peak and unique viewers are those of the current broadcast, or
 * of the last one while offline.
 */
export type StreamState = {
  stream: string
  status: 'live' | 'offline'
  title: string | null
  category: string | null
  startedAt: string | null
  endedAt: string | null
  /** Connections watching `stream:<id>` at the last viewer sample (0 once the broadcast ended). */
  viewers: number
  peakViewers: number
  uniqueViewers: number
}

/**
 * What a stream's channel and REST answer show of it, from its read-model row (or the projection's
 * copy of one): the API's reads and the workers' change runs share this one mapping.
 */
export const streamStateOf = (s: Omit<StreamState, 'startedAt' | 'endedAt'> & { startedAt: Date | null; endedAt: Date | null }): StreamState => ({
  stream: s.stream,
  status: s.status,
  title: s.title,
  category: s.category,
  startedAt: s.startedAt?.toISOString() ?? null,
  endedAt: s.endedAt?.toISOString() ?? null,
  viewers: s.viewers,
  peakViewers: s.peakViewers,
  uniqueViewers: s.uniqueViewers,
})

/** A stream not known yet: offline and empty, what its channel and REST answer show until its first event. */
export const unknownStreamState = (stream: string): StreamState => ({
  stream,
  status: 'offline',
  title: null,
  category: null,
  startedAt: null,
  endedAt: null,
  viewers: 0,
  peakViewers: 0,
  uniqueViewers: 0,
})

/** A poll as `GET /v1/polls/:poll` and the `poll:<id>` channel show it. */
export type PollView = {
  poll: string
  stream: string
  question: string
  status: 'open' | 'closed'
  options: { text: string; votes: number }[]
  /** Votes that did not count: repeats, votes after close, past the options, before the poll opened. */
  ignoredVotes: number
  openedAt: string
  closesAt?: string
  closedAt?: string
}

/**
 * A poll as `stream:<id>` carries it: what defines it, never its live tallies. The channel changes
 * when a poll opens or closes, not with each vote, so tallies in it would be those of whenever they
 * were read, and two clients at the same version could hold different ones. An open poll is its
 * definition only (follow `poll:<id>` for its tallies); a closed one, in the `closed` update, also
 * has its options' final votes, which no longer change. `ignoredVotes` is never here: it goes on
 * counting votes that come after the close.
 */
export type StreamPoll = Omit<PollView, 'status' | 'options' | 'ignoredVotes'> &
  ({ status: 'open'; options: { text: string }[] } | { status: 'closed'; options: { text: string; votes: number }[] })

/**
 * What `stream:<id>` carries of a poll (see StreamPoll): the API's snapshots and the workers'
 * changes share this one mapping, so a snapshot at version v equals the state after update v.
 */
export function streamPollOf(p: PollView): StreamPoll {
  const { status, options, ignoredVotes: _, ...definition } = p
  return status === 'open'
    ? { ...definition, status, options: options.map(({ text }) => ({ text })) }
    : { ...definition, status, options: options.map(({ text, votes }) => ({ text, votes })) }
}

/**
 * What changed on `stream:<id>`: its state (every change carries the whole state: replace yours),
 * or one of its polls opened or closed (`poll.status` says which; see StreamPoll for what it holds).
 */
export type StreamChange = { kind: 'state'; state: StreamState } | { kind: 'poll'; poll: StreamPoll }

/** What changed on `poll:<id>`: the whole poll after the batch (tallies coalesced, one per batch). */
export type PollChange = { kind: 'poll'; poll: PollView }

/**
 * What reactions did to a stream: `counts`, the reactions per emoji that the change (a worker
 * batch, or a window of them merged by the API) added; `totals`, the stream's running total of
 * each of those emojis after it. Emojis the change did not touch are in neither.
 */
export type ReactionsChange = { counts: Record<string, number>; totals: Record<string, number> }

/** A match's state (see core/matches.ts for the state machine). */
export type MatchStatus = 'open' | 'full' | 'started' | 'finished' | 'aborted'

/** Why a join was refused. */
export type MatchJoinRejection = 'unknown_match' | 'already_joined' | 'full' | 'started' | 'finished' | 'aborted'

/** One line of a finished match's final standings: highest score first, equal scores share a rank. */
export type MatchStanding = { player: string; score: number; rank: number }

/** A seat: its player, whether they are ready, and whether any of their connections to `match:<id>` is open. */
export type MatchPlayer = {
  player: string
  ready: boolean
  connected: boolean
  /** While disconnected: when the seat is given up unless they come back (ISO 8601, event time). */
  graceUntil?: string
}

/** A match as `GET /v1/matches/:match` and the snapshot of `match:<id>` show it. Times ISO 8601 (event times). */
export type MatchView = {
  match: string
  mode: string
  status: MatchStatus
  maxPlayers: number
  properties?: Record<string, string | number | boolean>
  /** Seated players, in the order they were seated. */
  players: MatchPlayer[]
  /** Final standings, once finished: of the match's lineup (the players seated when it started) only. */
  results?: MatchStanding[]
  /** Players the finish named who were not in the lineup: their results were ignored (absent when none). */
  ignored?: string[]
  createdAt: string
  startedAt?: string
  endedAt?: string
}

/**
 * What changed on `match:<id>`, in match order; `status` is the match's status after the change.
 * A client holding a MatchView applies them in version order (client/src/state does).
 */
export type MatchChange =
  | { kind: 'created'; match: MatchView; status: MatchStatus }
  /**
   * A seat taken. `connected` and `graceUntil` are the new seat's (false, and the end of the join
   * grace, until the player first connects to `match:<id>`); both absent from changes made before
   * the join grace existed, whose seats started connected.
   */
  | { kind: 'joined'; player: string; connected?: boolean; graceUntil?: string; status: MatchStatus }
  | { kind: 'rejected'; player: string; reason: MatchJoinRejection; status: MatchStatus }
  | { kind: 'left'; player: string; reason: 'left' | 'disconnected' | 'revoked'; status: MatchStatus }
  | { kind: 'ready'; player: string; status: MatchStatus }
  | { kind: 'connection'; player: string; connected: boolean; graceUntil?: string; status: MatchStatus }
  | { kind: 'started'; status: MatchStatus; /** startedAt (event time, ISO 8601). */ at: string }
  | { kind: 'finished'; results: MatchStanding[]; /** Named by the finish but not in the lineup: not scored. */ ignored?: string[]; status: MatchStatus; /** endedAt (event time, ISO 8601). */ at: string }
  | { kind: 'aborted'; status: MatchStatus; /** endedAt (event time, ISO 8601). */ at: string }

/** What changed on a user's private `user:<sub>` channel: the decision on one of their joins. */
export type UserChange = { kind: 'match.join'; match: string; accepted: true } | { kind: 'match.join'; match: string; accepted: false; reason: MatchJoinRejection }

/** One committed change of one channel, as the API's channel hub handles and pushes it. */
export type ChangeNotice = {
  channel: string
  version: number
  /** The channel's epoch (see channel_versions): versions are only comparable within one epoch. */
  epoch: string
  data: LeaderboardChange | ChatChange | StreamChange | PollChange | ReactionsChange | MatchChange | UserChange
  /** Commit time, ISO 8601. */
  at: string
  /** When JetStream stored the oldest event of the batch that made this change, ISO 8601 (absent from older runs). */
  stored?: string
}

/**
 * What the workers publish on a channel's subject: consecutive changes of one channel committed
 * together, as one NATS message. `changes[i]` is version `version + i`. A batch that changes a
 * board 60 times publishes one run, not 60 messages.
 */
export type ChangeRun = {
  channel: string
  /** Version of the first change. */
  version: number
  epoch: string
  changes: ChangeNotice['data'][]
  /** Commit time, ISO 8601. */
  at: string
  /** When JetStream stored the oldest event of the batch that made the run, ISO 8601 (for fanfare_event_to_push_seconds). */
  stored?: string
  /**
   * Set (to why) on a run with no changes that starts a new history of the channel: a new epoch,
   * at `version`. What subscribers hold of the old history no longer applies, and no update could
   * say so (an empty board's rules changed: the order and periods of its snapshot); API nodes
   * re-sync the channel's subscribers from a snapshot. Its version has no notice, so no resume
   * across it is served from history either.
   */
  restart?: string
}

/** The notices of a run, in version order. */
export function noticesOf(run: ChangeRun): ChangeNotice[] {
  // Built without an object spread: this runs for every change an API node receives.
  return run.changes.map((data, i) => {
    const n: ChangeNotice = { channel: run.channel, version: run.version + i, epoch: run.epoch, data, at: run.at }
    if (run.stored) n.stored = run.stored
    return n
  })
}

/** A run of one change: what tests and benchmarks publish to stand in for a worker. */
export const runOf = (n: ChangeNotice): ChangeRun => ({ channel: n.channel, version: n.version, epoch: n.epoch, changes: [n.data], at: n.at })
