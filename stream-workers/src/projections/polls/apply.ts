import { inArray, sql, type SQL, type SQLWrapper } from 'drizzle-orm'
import { channelOf, streamPollOf } from '../../../../core/channels'
import { rowsOf, type Db } from '../../../../core/db/client'
import { lookupByKey, recordset, fromExcluded } from '../../../../core/db/recordset'
import { polls, pollVotes } from '../../../../core/db/schema'
import type { StoredEvent } from '../../../../core/events'
import type { Applied, Change, Projection, SequencedEvent } from '../types'
import { evolvePoll, viewOf, type PollEvent, type PollRow } from './projection'
import { projectionAreas } from '../../../../core/projections'

type PollStoredEvent = Extract<StoredEvent, { type: `poll.${string}` }>

// Neither a poll name nor a principal id holds a NUL.
const voteKey = (poll: string, voter: string) => `${poll}\u0000${voter}`

/**
 * Applies a batch of `poll.*` events: loads the batch's polls and its voters' counted votes (two
 * queries, one round trip), evolves them in memory in event order, and returns the two writes (the
 * changed polls; the votes that counted) for the batch's one statement. The guard makes the pair
 * exact: a redelivered or re-run batch writes nothing twice. Changes are coalesced: one per poll per
 * batch on `poll:<id>`, with the tallies after the batch, and one on the poll's `stream:<id>` each
 * time it opens or closes (without tallies while open: see StreamPoll).
 */
export async function applyPolls(db: Db, events: SequencedEvent[]): Promise<Applied> {
  const list: { seq: number; ev: PollEvent }[] = []
  for (const { event, seq, storedAt } of events) {
    const e = event as PollStoredEvent
    const at = e.at && !Number.isNaN(Date.parse(e.at)) ? new Date(e.at) : storedAt
    switch (e.type) {
      case 'poll.opened':
      case 'poll.closed':
        list.push({ seq, ev: { type: e.type, data: e.data, at } as PollEvent })
        break
      case 'poll.voted':
        list.push({ seq, ev: { type: e.type, data: e.data, voter: e.by, at } })
        break
      default:
        // The batch dead-letters events of other areas before they get here.
        throw new Error(`polls projection got ${event.type}`)
    }
  }
  if (list.length === 0) return { changes: [] }

  const names = [...new Set(list.map(({ ev }) => ev.data.poll))]
  const voters = new Map<string, { poll: string; voter: string }>()
  for (const { ev } of list) if (ev.type === 'poll.voted') voters.set(voteKey(ev.data.poll, ev.voter), { poll: ev.data.poll, voter: ev.voter })
  const [pollRows, voteRows] = await Promise.all([
    db.select().from(polls).where(inArray(polls.poll, names)),
    voters.size === 0 ? Promise.resolve([]) : rowsOf<{ poll: string; voter: string }>(db, lookupByKey(pollVotes, ['poll', 'voter'], [...voters.values()])),
  ])
  const state = new Map<string, PollRow>(pollRows.map((r) => [r.poll, { ...r }]))
  const voted = new Set(voteRows.map((r) => voteKey(r.poll, r.voter)))

  const changes: Change[] = []
  const refused: { seq: number; reason: string }[] = []
  const dirty = new Map<string, PollRow>()
  const counted: { poll: string; voter: string; option: number; seq: number }[] = []
  for (const { seq, ev } of list) {
    const poll = ev.data.poll
    const before = state.get(poll)
    const r = evolvePoll(before, ev, (voter) => voted.has(voteKey(poll, voter)))
    if (!r) continue
    if ('refused' in r) {
      refused.push({ seq, reason: r.refused })
      continue
    }
    state.set(poll, r.next)
    dirty.set(poll, r.next)
    if (r.vote) {
      voted.add(voteKey(poll, r.vote.voter))
      counted.push({ poll, voter: r.vote.voter, option: r.vote.option, seq })
    }
    // Opening and closing show on the stream's channel, in event order: the poll's definition, and
    // its final votes once closed, never the tallies of the moment (the channel does not follow votes).
    const view = viewOf(r.next)
    if (view && r.next.status !== (before?.status ?? 'pending')) changes.push({ channel: channelOf.stream(view.stream), data: { kind: 'poll', poll: streamPollOf(view) } })
  }
  // One change per poll per batch: its state after the batch.
  for (const p of dirty.values()) {
    const view = viewOf(p)
    if (view) changes.push({ channel: channelOf.poll(p.poll), data: { kind: 'poll', poll: view } })
  }
  if (dirty.size === 0) return { changes, refused }

  const rows = [...dirty.values()].map((p) => ({
    ...p,
    options: p.options,
    votes: p.votes,
    openedAt: p.openedAt?.toISOString() ?? null,
    closesAt: p.closesAt?.toISOString() ?? null,
    closedAt: p.closedAt?.toISOString() ?? null,
  }))
  const columns = {
    poll: 'text',
    status: 'text',
    stream: 'text',
    question: 'text',
    options: 'jsonb',
    votes: 'jsonb',
    ignoredVotes: 'int',
    openedAt: 'timestamptz',
    closesAt: 'timestamptz',
    closedAt: 'timestamptz',
  }
  const write = (when: SQL) => {
    const out: SQLWrapper[] = [
      db
        .insert(polls)
        .select(
          sql`select poll, status, stream, question, options, votes, "ignoredVotes", "openedAt", "closesAt", "closedAt" from ${recordset('p', columns, rows)} where ${when}`,
        )
        .onConflictDoUpdate({
          target: polls.poll,
          set: fromExcluded(polls, 'status', 'stream', 'question', 'options', 'votes', 'ignoredVotes', 'openedAt', 'closesAt', 'closedAt'),
        }),
    ]
    if (counted.length > 0) {
      out.push(
        db
          .insert(pollVotes)
          .select(sql`select poll, voter, option, seq from ${recordset('v', { poll: 'text', voter: 'text', option: 'int', seq: 'bigint' }, counted)} where ${when}`),
      )
    }
    return out
  }
  return { changes, write, refused }
}

/** The polls read model: `poll.*` events into polls and poll_votes. */
export const pollsProjection: Projection = { name: 'polls', area: projectionAreas.polls, apply: applyPolls }
