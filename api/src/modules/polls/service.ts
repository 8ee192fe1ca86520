import { and, desc, asc, eq } from 'drizzle-orm'
import { channelOf, type PollView } from '../../../../core/channels'
import type { Db } from '../../../../core/db/client'
import { polls } from '../../../../core/db/schema'
import { readChannelSnapshot, type ChannelSnapshot } from '../channel-snapshot'

type PollRow = typeof polls.$inferSelect

/**
 * What clients see of a poll row: undefined while it is pending (votes came, it never opened). The
 * read model closes a poll by its events' times; a poll whose `closesAt` passed without a
 * `poll.closed` or a later vote still says open there, so it is shown closed from `now` on.
 */
export function pollView(row: PollRow, now: Date): PollView | undefined {
  if (row.status === 'pending' || row.stream === null || row.question === null || row.openedAt === null) return undefined
  const expired = row.status === 'open' && row.closesAt !== null && row.closesAt.getTime() <= now.getTime()
  const closedAt = expired ? row.closesAt : row.closedAt
  return {
    poll: row.poll,
    stream: row.stream,
    question: row.question,
    status: expired ? 'closed' : row.status,
    options: row.options.map((text, i) => ({ text, votes: row.votes[i] ?? 0 })),
    ignoredVotes: row.ignoredVotes,
    openedAt: row.openedAt.toISOString(),
    ...(row.closesAt ? { closesAt: row.closesAt.toISOString() } : {}),
    ...(closedAt ? { closedAt: closedAt.toISOString() } : {}),
  }
}

/** A poll as `GET /v1/polls/:poll` answers it; undefined when it never opened. */
export async function readPoll(db: Db, poll: string, now = new Date()): Promise<PollView | undefined> {
  const [row] = await db.select().from(polls).where(eq(polls.poll, poll))
  return row && pollView(row, now)
}

/** A stream's open polls, the most recently opened first. */
export async function openPollsOf(db: Db, stream: string, now = new Date()): Promise<PollView[]> {
  const rows = await db
    .select()
    .from(polls)
    .where(and(eq(polls.stream, stream), eq(polls.status, 'open')))
    .orderBy(desc(polls.openedAt), asc(polls.poll))
  return rows.map((r) => pollView(r, now)).filter((v): v is PollView => v?.status === 'open')
}

/** The channel `poll:<id>`: the poll with its version and epoch; null data for a poll not opened. */
export function pollSnapshot(db: Db, poll: string): Promise<ChannelSnapshot<PollView | null>> {
  return readChannelSnapshot(db, channelOf.poll(poll), async (q) => (await readPoll(q, poll)) ?? null)
}
