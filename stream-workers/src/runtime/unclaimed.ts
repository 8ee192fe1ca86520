import type { JetStreamManager } from '@nats-io/jetstream'
import type { ReplayReply, ReplayRequest } from '../../../core/dead-letters'
import { subjects } from '../../../core/events'
import { identityOf, nextBySubject } from '../../../core/nats'
import { claimOf, projectionAreas, UNCLAIMED } from '../../../core/projections'
import { backoffMs, sleep } from '../../../core/backoff'
import type { UnclaimedCatch } from '../projections/types'
import { applyBatch, claimFence, type BatchMessage, type BatchOwner } from './batch'
import { CheckpointMovedError, errorMessageOf, FencedError, isDbError, isProgrammingError, isTransientDbError } from './errors'
import { openCheckpoint } from './open-checkpoint'
import { replayDeadLetter } from './replay'
import type { PartitionDeps } from './runner'
import { StreamChanged } from './stream-check'

/**
 * The catch of messages no projection consumes. JetStream stores whatever is published under
 * `<prefix>.ev.>` (a service with NATS access may publish there past the API), but each
 * projection's consumer takes only `<prefix>.ev.<partition>.<area>.>` of the deployment's
 * partitions: a message on any other subject (an unknown area, a partition out of range or written
 * `03`, a subject too short) was stored, acknowledged, and seen by no one. Such messages are
 * written as dead letters of `unclaimed`, partition 0 (see startUnclaimedPoller).
 */
export const unclaimedCatch: UnclaimedCatch = { name: UNCLAIMED }

/** Why a message on `subject` is a dead letter of the catch; undefined when a projection consumes it. */
export function unclaimedReason(subject: string, partitions: number): string | undefined {
  if (claimOf(subject, partitions)) return undefined
  const areas = Object.values(projectionAreas).join(', ')
  return `no projection consumes subject ${JSON.stringify(subject)}: events are taken on <prefix>.ev.<partition>.<area>.<type> with a partition 0-${partitions - 1} and an area of ${areas}`
}

export type UnclaimedPollerDeps = PartitionDeps & {
  /** How long between two looks at the stream (FANFARE_UNCLAIMED_POLL_MS). */
  intervalMs: number
  /** A newer owner wrote the checkpoint: the poller has stopped; partition 0's lease is not ours. */
  onFenced: () => void
}

export type UnclaimedPoller = {
  /** Stops polling, lets a running look finish; resolves when idle. */
  stop: () => Promise<void>
  /** Replays an `unclaimed` dead letter between two looks (see replayDeadLetter). */
  replay: (request: ReplayRequest) => Promise<ReplayReply>
}

/**
 * Run by the holder of partition 0's lease: once at start and then every `intervalMs`, reads the
 * stream's last sequence (STREAM.INFO) and, if anything was stored since its last look, asks for the
 * subjects under `<prefix>.ev.>` with their message counts (STREAM.INFO with `subjects_filter`; the
 * distinct subjects are bounded by partitions x event types, keys are not in subjects), keeps those
 * claimOf rejects, and reads only those subjects' messages past its
 * checkpoint (STREAM.MSG.GET `next_by_subj`, merged in stream order), writing them as dead letters
 * with the checkpoint in one statement (applyBatch: the checkpoint guard, the fence of
 * claimFence and the stream identity, like every projection's batch). So its cost follows the
 * distinct subjects (one info reply per look) and the strays (one get each, plus one per stray
 * subject per look), not the events: nothing is delivered or done per event a projection takes.
 *
 * Why no message is missed: the subject list is asked for after the last sequence was read, so
 * every subject holding a message at or below it is in the list; a look reads strays up to that
 * sequence only, and its checkpoint is the last stray it wrote (every stray at or below it
 * written). Why none is written twice: the checkpoint moves in the statement that writes
 * the dead letters, and the next look (this process's or a new owner's) reads from it.
 * See docs/design.md, "Unclaimed subjects".
 */
export function startUnclaimedPoller(deps: UnclaimedPollerDeps): UnclaimedPoller {
  let log = deps.logger.child({ component: 'unclaimed' })
  const now = deps.now ?? (() => new Date())
  const abort = new AbortController()
  let token = 0
  // The event stream's identity and the checkpoint as this poller last saw it ('' : to be read).
  let stream = ''
  let checkpoint = 0
  // Every stray at or below this sequence is written (a look that finished): the next look reads past it.
  let scanned = 0
  const owner = (): BatchOwner => ({ projection: unclaimedCatch, partition: 0, token, partitions: deps.partitions, stream })

  // Looks and replays take turns: both rely on the checkpoint guard.
  let turn: Promise<unknown> = Promise.resolve()
  const exclusive = <T>(work: () => Promise<T>): Promise<T> => {
    const mine = turn.then(work, work)
    turn = mine.catch(() => {})
    return mine
  }

  /** One look at the stream: dead-letters the strays stored since the last one. */
  const look = async () => {
    const info = await deps.jsm.streams.info(deps.stream)
    // A recreated stream (sequences restarted): read the checkpoint again (openCheckpoint resets it).
    if (identityOf(info) !== stream) throw new StreamRecreated(stream, identityOf(info))
    const last = info.state.last_seq
    const from = Math.max(checkpoint, scanned)
    if (last <= from) return
    // Asked after `last` was read: every subject holding a message at or below `last` is listed.
    const listed = await deps.jsm.streams.info(deps.stream, { subjects_filter: subjects.allEvents(deps.prefix) })
    if (identityOf(listed) !== stream) throw new StreamRecreated(stream, identityOf(listed))
    const strays = Object.keys(listed.state.subjects ?? {}).filter((s) => !claimOf(s, deps.partitions))
    for (let after = from; strays.length > 0; ) {
      const started = performance.now()
      const batch = await readStrays(deps.jsm, deps.stream, strays, after, last, deps.batchSize)
      if (batch.length === 0) break
      // The gets name no incarnation: strays read from a stream recreated meanwhile must not be
      // written under this one's checkpoint (and again under the new one's after the reset).
      const current = identityOf(await deps.jsm.streams.info(deps.stream))
      if (current !== stream) throw new StreamRecreated(stream, current)
      const result = await applyBatch(deps.db, owner(), checkpoint, batch, now())
      await deps.hooks?.onUnclaimedCommit?.({ seqs: batch.map((m) => m.seq) })
      checkpoint = result.checkpoint
      after = result.checkpoint
      deps.metrics.worker.batch(UNCLAIMED, (performance.now() - started) / 1000, batch.length, result.deadLettered)
      log.warn({ deadLettered: result.deadLettered, subject: batch[0].subject, seq: batch[0].seq, lastSeq: result.checkpoint }, 'messages on subjects no projection consumes written to dead letters')
      if (batch.length < deps.batchSize) break
    }
    scanned = last
  }

  const replay = async (request: ReplayRequest): Promise<ReplayReply> => {
    if (!stream || abort.signal.aborted) return { outcome: 'unavailable', message: 'the catch of unclaimed messages is starting or stopping' }
    try {
      const { reply } = await exclusive(async () => {
        try {
          return await replayDeadLetter(deps.db, owner(), checkpoint, request, now())
        } catch (err) {
          // Moved by another owner since our last look: the replay leaves the checkpoint as it is.
          if (err instanceof CheckpointMovedError && err.actual !== undefined) return replayDeadLetter(deps.db, owner(), err.actual, request, now())
          throw err
        }
      })
      log.info({ deadLetter: request.id, outcome: reply.outcome }, 'dead letter replayed')
      return reply
    } catch (err) {
      log.warn({ err, deadLetter: request.id }, 'dead letter replay failed')
      return { outcome: 'unavailable', message: err instanceof FencedError ? 'this worker no longer owns partition 0' : errorMessageOf(err) }
    }
  }

  const run = async () => {
    for (let attempt = 0; !abort.signal.aborted; ) {
      try {
        if (!token) {
          token = await claimFence(deps.db, UNCLAIMED, 0)
          log = log.child({ token })
        }
        if (!stream) {
          ;({ stream, checkpoint } = await openCheckpoint({ db: deps.db, jsm: deps.jsm, log }, deps.stream, UNCLAIMED, 0))
          scanned = 0
        }
        await exclusive(look)
        attempt = 0
        await sleep(deps.intervalMs, abort.signal)
      } catch (err) {
        if (abort.signal.aborted) break
        if (err instanceof FencedError) {
          log.warn({ err: err.message }, 'a newer owner holds partition 0; stopping the catch of unclaimed messages')
          abort.abort()
          deps.onFenced()
          break
        }
        if (err instanceof StreamChanged || isProgrammingError(err) || (isDbError(err) && !isTransientDbError(err))) {
          log.fatal({ err }, 'the catch of unclaimed messages failed with an error retrying cannot fix')
          abort.abort()
          deps.onFatal(err)
          break
        }
        // NATS or Postgres trouble, a recreated stream, a checkpoint moved by someone else, or a
        // crash after a commit (the test seam): start over from the checkpoint in Postgres.
        log.warn({ err, attempt }, 'unclaimed look failed; reading the checkpoint again')
        stream = ''
        await sleep(backoffMs(attempt++), abort.signal)
      }
    }
  }

  const done = run()
  return {
    replay,
    stop: async () => {
      abort.abort()
      await done
    },
  }
}

/** The event stream is not the one the checkpoint was read in. */
class StreamRecreated extends Error {
  constructor(held: string, now: string) {
    super(`the event stream is now ${now}, the checkpoint counts in ${held}`)
    this.name = 'StreamRecreated'
  }
}

/**
 * Up to `max` messages of `strays` (subjects) after sequence `after` and at most `upTo`, in stream
 * order: a merge of each subject's next message (one get per subject, then one per message taken).
 * A message deleted in between (retention, an operator) is not read, as no consumer would deliver it.
 */
export async function readStrays(jsm: JetStreamManager, stream: string, strays: string[], after: number, upTo: number, max: number): Promise<BatchMessage[]> {
  const next = async (subject: string, seq: number) => {
    const m = await jsm.streams.getMessage(stream, nextBySubject(subject, seq))
    return m && m.seq <= upTo ? m : null
  }
  const heads = (await Promise.all(strays.map((s) => next(s, after + 1)))).filter((m) => m !== null)
  const taken: BatchMessage[] = []
  while (heads.length > 0 && taken.length < max) {
    let first = 0
    for (let i = 1; i < heads.length; i++) if (heads[i].seq < heads[first].seq) first = i
    const m = heads[first]
    taken.push({ subject: m.subject, seq: m.seq, body: m.data, storedAt: m.time })
    const following = taken.length < max ? await next(m.subject, m.seq + 1) : null
    if (following) heads[first] = following
    else heads.splice(first, 1)
  }
  return taken
}
