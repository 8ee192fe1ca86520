import { eq } from 'drizzle-orm'
import type { Db } from '../../../core/db/client'
import { auditLog, deadLetters } from '../../../core/db/schema'
import { parseReplaySubject, replaySubjects, type ReplayReply, type ReplayRequest } from '../../../core/dead-letters'
import type { SubscriptionWatch } from '../../../core/nats-subscriptions'
import type { BatchOwner } from './batch'
import { rebuildsInProgress } from '../rebuild/shadow'
import { applyOneByOne } from './one-by-one'
import { UNCLAIMED } from '../../../core/projections'
import type { OutboxEvent, OutboxRun } from './outbox'

/**
 * Re-runs dead letter `id` through its projection, exactly once: in one transaction that holds the
 * dead letter's row lock (a concurrent replay or discard waits, then finds it gone), applyBatch in
 * replay mode writes the read model, the channel changes and the deletion of the dead letter
 * together, or, if the message still cannot apply, only its new reason. The caller is the runner
 * that owns the partition, between its batches: `expected` is its checkpoint, which stays where it
 * is (the runner's next batch guard still holds); a stale owner is refused by the fence, like any
 * of its batches (FencedError). While a rebuild of the projection has a shadow not yet switched in,
 * nothing is written: `unavailable` with code `rebuild_in_progress` (see rebuildsInProgress).
 */
export async function replayDeadLetter(db: Db, owner: BatchOwner, expected: number, request: ReplayRequest, now: Date): Promise<{ reply: ReplayReply; runs: OutboxRun[]; events: OutboxEvent[] }> {
  const { id, actor } = request
  return db.transaction(async (tx) => {
    const [row] = await tx.select().from(deadLetters).where(eq(deadLetters.id, id)).for('update')
    if (!row) return { reply: { outcome: 'not_found' }, runs: [], events: [] }
    if (row.projection !== owner.projection.name || row.partition !== owner.partition) {
      return { reply: { outcome: 'unavailable', message: `dead letter ${id} belongs to ${row.projection}/${row.partition}, not this runner` }, runs: [], events: [] }
    }
    // A rebuild of this projection not yet switched in would replace what the replay applies (the
    // catch of unclaimed messages has no rebuild).
    const shadows = owner.projection.name === UNCLAIMED ? [] : await rebuildsInProgress(tx, owner.projection.name)
    if (shadows.length > 0) {
      const message = `a rebuild of ${owner.projection.name} is in progress (${shadows.join(', ')}): its switch replaces the live model and its dead letters, so a replay now would be undone; replay after the rebuild switches in`
      return { reply: { outcome: 'unavailable', code: 'rebuild_in_progress', message }, runs: [], events: [] }
    }
    // Applied at the time JetStream stored it, as its batch would have (a daily board's period, a
    // match's times); rows from before stored_at was kept have only the time they were written.
    const message = { subject: row.subject, seq: row.streamSeq, body: new TextEncoder().encode(row.payload), storedAt: row.storedAt ?? row.createdAt }
    // Through applyOneByOne, as a batch of one: if Postgres refuses its data, the statement is
    // undone to a savepoint and the dead letter records that reason (still failing).
    const result = await applyOneByOne(tx as unknown as Db, owner, expected, [message], () => now, {
      isolate: (run) => tx.transaction((sp) => run(sp as unknown as Db)),
      opts: { replay: { deadLetter: id } },
    })
    // Recorded with what it did (see ReplayRequest), as the API records its other admin actions.
    const about = { projection: row.projection, partition: row.partition, streamSeq: row.streamSeq, eventId: row.eventId }
    const audited = async (action: 'dead_letter.replayed' | 'dead_letter.replay_failed', details: Record<string, unknown>) => {
      if (actor === undefined) return {}
      await tx.insert(auditLog).values({ actor, action, target: `dead_letter:${id}`, details })
      return { audited: true as const }
    }
    if (result.stillFailing !== undefined) {
      const reason = result.stillFailing
      return { reply: { outcome: 'still_failing', reason, ...(await audited('dead_letter.replay_failed', { ...about, reason })) }, runs: [], events: [] }
    }
    return { reply: { outcome: 'replayed', ...(await audited('dead_letter.replayed', about)) }, runs: result.runs, events: result.events }
  })
}

/**
 * Answers `POST /admin/dead-letters/:id/replay` requests for the runners of this worker process:
 * one subscription for the process, and only the process running the runner of the request's
 * projection and partition answers (the others stay silent; with no worker at all the API gets
 * "no responders"). One subscription rather than one per runner: with one per runner, the worker's
 * JetStream requests kept timing out after a NATS restart (test/cluster/nats-restart.int.test.ts).
 */
export function answerReplays(deps: {
  /** The process's watched subscriptions: denied (permissions narrowed while it runs), replays are logged and counted, and subscribed again once granted. */
  subscriptions: SubscriptionWatch
  prefix: string
  runnerOf: (projection: string, partition: number) => { replay: (request: ReplayRequest) => Promise<ReplayReply> } | undefined
}): { stop: () => void } {
  const sub = deps.subscriptions.subscribe(replaySubjects(deps.prefix), {
    name: 'replays',
    onMessage: (msg) => {
      const { projection, partition } = parseReplaySubject(msg.subject)
      const runner = deps.runnerOf(projection, partition)
      if (!runner) return
      let request: ReplayRequest
      try {
        const { id, actor } = msg.json<ReplayRequest>()
        request = typeof actor === 'string' ? { id, actor } : { id }
      } catch {
        return
      }
      void runner.replay(request).then((reply) => msg.respond(JSON.stringify(reply)))
    },
  })
  return { stop: () => sub.unsubscribe() }
}
