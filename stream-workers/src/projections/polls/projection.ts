import type { PollView } from '../../../../core/channels'
import type { PollClosed, PollOpened, PollVoted } from '../../../../core/events'

/** A poll as the read model holds it (see the `polls` table). */
export type PollRow = {
  poll: string
  /** `pending`: not opened (yet); the row only counts the votes that came before it opened. */
  status: 'pending' | 'open' | 'closed'
  stream: string | null
  question: string | null
  options: string[]
  votes: number[]
  ignoredVotes: number
  openedAt: Date | null
  closesAt: Date | null
  closedAt: Date | null
}

/** A `poll.*` event with its event time and, for a vote, its voter (the event's principal). */
export type PollEvent =
  | { type: 'poll.opened'; data: PollOpened; at: Date }
  | { type: 'poll.voted'; data: PollVoted; voter: string; at: Date }
  | { type: 'poll.closed'; data: PollClosed; at: Date }

/**
 * What an event does to its poll: the poll after it, with the vote to record when one counted;
 * `refused` with why for an event that can never apply (dead-lettered); null when nothing changes.
 */
export type Evolved = { next: PollRow; vote?: { voter: string; option: number } } | { refused: string } | null

const pending = (poll: string): PollRow => ({
  poll,
  status: 'pending',
  stream: null,
  question: null,
  options: [],
  votes: [],
  ignoredVotes: 0,
  openedAt: null,
  closesAt: null,
  closedAt: null,
})

const ignored = (p: PollRow): PollRow => ({ ...p, ignoredVotes: p.ignoredVotes + 1 })

/**
 * The poll after an event. Every decision depends only on the poll's events in stream order and
 * their event times (`at`), never on the clock, so a rebuild decides the same:
 * - opened: opens it (keeping the count of votes ignored before). A poll already opened is not
 *   opened again: refused (a dead letter says so; the first poll stays). A `closesAt` not after
 *   the opening closes it at once (`closedAt` the opening's time, never before `openedAt`).
 * - voted: counts the voter's first valid vote. Ignored and counted in `ignoredVotes`: a vote for a
 *   poll not opened, a closed one, one at or after `closesAt` (which also closes the poll, at
 *   `closesAt`), an option index past the options, a voter's vote after their counted one.
 *   `hasVoted(voter)` says whether the voter has a counted vote in this poll.
 * - closed: closes an open poll (at the event's time, or at `closesAt` if that came first); no
 *   change for a poll closed or not opened.
 */
export function evolvePoll(current: PollRow | undefined, event: PollEvent, hasVoted: (voter: string) => boolean): Evolved {
  switch (event.type) {
    case 'poll.opened': {
      const d = event.data
      if (current && current.status !== 'pending') return { refused: `poll ${JSON.stringify(d.poll)} is already opened` }
      const closesAt = d.closesAt === undefined ? null : new Date(d.closesAt)
      const over = closesAt !== null && closesAt.getTime() <= event.at.getTime()
      return {
        next: {
          poll: d.poll,
          status: over ? 'closed' : 'open',
          stream: d.stream,
          question: d.question,
          options: d.options,
          votes: d.options.map(() => 0),
          ignoredVotes: current?.ignoredVotes ?? 0,
          openedAt: event.at,
          closesAt,
          // Closed at once, so at the opening: never before it (a closesAt in the past).
          closedAt: over ? event.at : null,
        },
      }
    }
    case 'poll.voted': {
      const p = current ?? pending(event.data.poll)
      if (p.status === 'pending' || p.status === 'closed') return { next: ignored(p) }
      if (p.closesAt !== null && event.at.getTime() >= p.closesAt.getTime()) return { next: { ...ignored(p), status: 'closed', closedAt: p.closesAt } }
      const option = event.data.option
      if (option >= p.options.length || hasVoted(event.voter)) return { next: ignored(p) }
      const votes = p.votes.slice()
      votes[option]++
      return { next: { ...p, votes }, vote: { voter: event.voter, option } }
    }
    case 'poll.closed': {
      if (!current || current.status !== 'open') return null
      const closedAt = current.closesAt !== null && current.closesAt.getTime() < event.at.getTime() ? current.closesAt : event.at
      return { next: { ...current, status: 'closed', closedAt } }
    }
    default: {
      const never: never = event
      throw new Error(`unknown poll event ${JSON.stringify(never)}`)
    }
  }
}

/** What `GET /v1/polls/:poll` and the channels show of an opened poll; undefined for a pending one. */
export function viewOf(p: PollRow): PollView | undefined {
  if (p.status === 'pending' || p.stream === null || p.question === null || p.openedAt === null) return undefined
  return {
    poll: p.poll,
    stream: p.stream,
    question: p.question,
    status: p.status,
    options: p.options.map((text, i) => ({ text, votes: p.votes[i] ?? 0 })),
    ignoredVotes: p.ignoredVotes,
    openedAt: p.openedAt.toISOString(),
    ...(p.closesAt ? { closesAt: p.closesAt.toISOString() } : {}),
    ...(p.closedAt ? { closedAt: p.closedAt.toISOString() } : {}),
  }
}
