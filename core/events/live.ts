import { Type, type Static } from '@sinclair/typebox'
import { rule } from '../validation'
import { ActorId, EventId, Name, PrincipalId } from './fields'

/** Free text shown to viewers: a stream title, a poll question or option. No control characters or lone surrogates. */
const text = (max: number, description: string) =>
  Type.String({
    minLength: 1,
    maxLength: max,
    pattern: '^(?:[^\\u0000-\\u001f\\u007f\\uD800-\\uDFFF]|[\\uD800-\\uDBFF][\\uDC00-\\uDFFF])+$',
    description,
    ...rule(`must be 1-${max} characters with no control characters (nor an unpaired surrogate)`),
  })
export const StreamTitle = text(140, '1-140 chars, no control characters')
export const StreamCategory = text(64, '1-64 chars, no control characters')

/** A broadcast goes live. Key: stream. Keys with the scope, admins. */
export const StreamStarted = Type.Object(
  { stream: Name, title: StreamTitle, category: Type.Optional(StreamCategory) },
  { additionalProperties: false, $id: 'stream.started@1' },
)
export type StreamStarted = Static<typeof StreamStarted>

/** A live (or offline) stream's title or category changes. Key: stream. At least one of them. */
export const StreamUpdated = Type.Object(
  { stream: Name, title: Type.Optional(StreamTitle), category: Type.Optional(StreamCategory) },
  { additionalProperties: false, $id: 'stream.updated@1' },
)
export type StreamUpdated = Static<typeof StreamUpdated>

/** A broadcast ends. Key: stream. */
export const StreamEnded = Type.Object({ stream: Name }, { additionalProperties: false, $id: 'stream.ended@1' })
export type StreamEnded = Static<typeof StreamEnded>

/** Most viewers one stream can count (the streams table holds them as integers). */
export const MAX_VIEWERS = 1_000_000_000

/**
 * What presence saw of a stream's viewers, written through the stream so that the peak and the
 * unique viewers are exact and rebuildable. Published by API nodes (the system principal) at most
 * once a second per live stream: `viewers` is the cluster-wide count of connections watching
 * `stream:<id>` then; `users` the users seen watching since the previous sample (a set: repeats
 * are harmless). Key: stream.
 */
export const StreamViewersSampled = Type.Object(
  { stream: Name, viewers: Type.Integer({ minimum: 0, maximum: MAX_VIEWERS }), users: Type.Array(ActorId, { maxItems: 5000 }) },
  { additionalProperties: false, $id: 'stream.viewers.sampled@1' },
)
export type StreamViewersSampled = Static<typeof StreamViewersSampled>

/** One emoji grapheme (a flag, a keycap, a skin-toned or ZWJ sequence count as one). */
export const Emoji = Type.String({ minLength: 1, maxLength: 32, description: 'one emoji grapheme', ...rule('must be one emoji') })

/** A viewer's reaction. Key: stream. */
export const ReactionSent = Type.Object({ stream: Name, emoji: Emoji }, { additionalProperties: false, $id: 'reaction.sent@1' })
export type ReactionSent = Static<typeof ReactionSent>

/**
 * Reactions to one stream that an API node accepted together, stored as ONE message: at thousands
 * a second, a JetStream message per reaction cost more CPU than the machine had (see
 * bench/findings.md). Only API nodes publish it (clients send `reaction.sent`); each reaction keeps
 * its own id and publisher (`by`). JetStream de-duplicates the message, not the reactions in it, so
 * the reactions projection does that: a reaction counts unless the same (stream, by, id) was counted
 * at most `dedupWindowMs` (the node's FANFARE_DEDUP_WINDOW_MS) before, by stored time. Key: stream.
 */
export const ReactionsBatched = Type.Object(
  {
    stream: Name,
    dedupWindowMs: Type.Integer({ minimum: 0, maximum: 7 * 24 * 3600_000 }),
    reactions: Type.Array(Type.Object({ id: EventId, by: PrincipalId, emoji: Emoji }, { additionalProperties: false }), { minItems: 1, maxItems: 1000 }),
  },
  { additionalProperties: false, $id: 'reaction.batched@1' },
)
export type ReactionsBatched = Static<typeof ReactionsBatched>

/** A poll opens on a stream. Key: poll. Keys with the scope, admins, moderators. */
export const PollOpened = Type.Object(
  {
    stream: Name,
    poll: Name,
    question: text(280, '1-280 chars'),
    options: Type.Array(text(80, '1-80 chars'), { minItems: 2, maxItems: 5 }),
    /**
     * When the poll closes by itself (event time, so a rebuild closes it at the same vote). A
     * pattern, not `format: 'date-time'`: formats live in a registry that only Elysia fills, so
     * the workers (which never load Elysia) would refuse every such event.
     */
    closesAt: Type.Optional(
      Type.String({ pattern: '^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}(?:\\.\\d{1,9})?(?:Z|[+-]\\d{2}:\\d{2})$', maxLength: 40, description: 'ISO 8601 date-time with a time zone, e.g. 2030-01-02T03:04:05Z', ...rule('must be an ISO 8601 date-time with a time zone, e.g. 2030-01-02T03:04:05Z') }),
    ),
  },
  { additionalProperties: false, $id: 'poll.opened@1' },
)
export type PollOpened = Static<typeof PollOpened>

/**
 * Poll text as a viewer sees it: in NFC, without the characters that show as nothing (Unicode's
 * default-ignorables: zero-width spaces and joiners, soft hyphens, bidi marks, fillers), trimmed.
 * Empty: the text shows as blank.
 */
export const visibleText = (s: string): string => s.normalize('NFC').replace(/\p{Default_Ignorable_Code_Point}/gu, '').trim()

/**
 * An option's identity: what tells it from the others, for voters. Its visible text (see
 * visibleText) in NFKC, so that compatibility forms count as the letters they show (full-width `Ａ`
 * and `A`, the ligature `ﬁ` and `fi`, `²` and `2`), and in any case. Only for comparing: the text is
 * stored and shown as given.
 */
export function optionKey(option: string): string {
  const text = option.normalize('NFKC').replace(/\p{Default_Ignorable_Code_Point}/gu, '').trim()
  // Upper then lower case: a case fold that also equates ß with SS and ς with σ (toLowerCase alone
  // does not); NFKC again, as a case mapping may leave a letter decomposed (ǰ upper-cases to J + ◌̌).
  return text.toUpperCase().toLowerCase().normalize('NFKC')
}

/**
 * The first option that repeats an earlier one, as voters would read them (the same optionKey: the
 * same visible text in any case and compatibility form), with the earlier one's index; undefined
 * when all differ. Two options a voter cannot tell apart split the votes of one answer; the API
 * refuses such polls (stored ones still apply).
 */
export function repeatedOptionOf(options: string[]): { index: number; earlier: number } | undefined {
  const seen = new Map<string, number>()
  for (const [index, o] of options.entries()) {
    const k = optionKey(o)
    const earlier = seen.get(k)
    if (earlier !== undefined) return { index, earlier }
    seen.set(k, index)
  }
  return undefined
}

/** A user's vote: the 0-based option index. The voter is the event's principal (`by`). Key: poll. */
export const PollVoted = Type.Object(
  { poll: Name, option: Type.Integer({ minimum: 0, maximum: 4 }) },
  { additionalProperties: false, $id: 'poll.voted@1' },
)
export type PollVoted = Static<typeof PollVoted>

/** A poll closes. Key: poll. */
export const PollClosed = Type.Object({ poll: Name }, { additionalProperties: false, $id: 'poll.closed@1' })
export type PollClosed = Static<typeof PollClosed>

const graphemes = new Intl.Segmenter(undefined, { granularity: 'grapheme' })
const emojiStart = /^(?:\p{Extended_Pictographic}|\p{Regional_Indicator}{2}|[#*0-9]\uFE0F?\u20E3)/u

/**
 * Answers of isOneEmoji for strings seen lately. Reactions repeat a few dozen emojis thousands of
 * times a second, and segmenting each (in the API and again in the worker) was ~8% of an API
 * node's CPU under reaction load. Bounded: past the limit it starts over, so a stream of distinct
 * strings costs what it did without the memo.
 */
const oneEmoji = new Map<string, boolean>()
const ONE_EMOJI_MEMO = 4096

/** Whether a string is exactly one emoji grapheme. */
export function isOneEmoji(s: string): boolean {
  let answer = oneEmoji.get(s)
  if (answer === undefined) {
    answer = segmentsAsOneEmoji(s)
    if (oneEmoji.size >= ONE_EMOJI_MEMO) oneEmoji.clear()
    oneEmoji.set(s, answer)
  }
  return answer
}

/**
 * What a new reaction's emoji must be, on top of isOneEmoji: Unicode's recommended emoji (RGI: a
 * flag, a keycap, a skin tone, a subdivision flag, a ZWJ sequence, as the engine's Unicode data
 * lists them), one pictograph in text or emoji presentation (`❤`, `❤︎`, `©`), or a keycap without
 * its FE0F. isOneEmoji also passes a grapheme that starts with an emoji and carries combining marks,
 * stray joiners or tag characters (`👍` + U+0301 looks like `👍`): their variants are endless, and
 * each would be one more total of the stream in every snapshot. Only the API applies this (see
 * `admit` in the contracts): events stored under isOneEmoji alone still apply, in a rebuild too.
 */
const RGI_EMOJI = new RegExp('^\\p{RGI_Emoji}$', 'v')
const PICTOGRAPH_OR_KEYCAP = /^(?:\p{Extended_Pictographic}[\uFE0E\uFE0F]?|[#*0-9]\uFE0F?\u20E3)$/u
const emojiToAdmit = new Map<string, boolean>()

/** Whether a new reaction's emoji is a well-formed emoji (see RGI_EMOJI above). */
export function isEmojiToAdmit(s: string): boolean {
  let answer = emojiToAdmit.get(s)
  if (answer === undefined) {
    answer = isOneEmoji(s) && (RGI_EMOJI.test(s) || PICTOGRAPH_OR_KEYCAP.test(s))
    if (emojiToAdmit.size >= ONE_EMOJI_MEMO) emojiToAdmit.clear()
    emojiToAdmit.set(s, answer)
  }
  return answer
}

function segmentsAsOneEmoji(s: string): boolean {
  let n = 0
  for (const _ of graphemes.segment(s)) if (++n > 1) return false
  return n === 1 && emojiStart.test(s)
}
