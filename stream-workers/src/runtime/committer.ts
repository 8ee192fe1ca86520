import { context, trace, type Context, type Link } from '@opentelemetry/api'
import type { Db } from '../../../core/db/client'
import type { Logger } from '../../../core/logger'
import { commitBatch, commitGroup, groupable, prepareBatch, type BatchMessage, type BatchOwner, type BatchResult, type PreparedBatch } from './batch'

/**
 * Applies the batches of one projection's runners in one process (see createBatchCommitter):
 * `apply` has applyBatch's semantics and errors, batch by batch.
 */
export type BatchCommitter = {
  apply: (owner: BatchOwner, expected: number, messages: BatchMessage[], now: Date) => Promise<BatchResult>
}

type Waiting = { p: PreparedBatch; ctx: Context; resolve: (r: BatchResult) => void; reject: (err: unknown) => void }

/**
 * Group commit for the runners of one projection in one process. Each batch is read and evolved
 * as in applyBatch; then its statement runs at once if none of this committer's is in flight
 * (an idle process never waits), and otherwise waits for the one in flight to finish: all the
 * batches that became ready meanwhile then go as ONE statement (commitGroup), one commit and one
 * hold of the channel version rows, where alone each would queue on those rows (one board spans
 * every partition) and flush its own commit. If the group statement writes nothing (a batch was
 * fenced or its checkpoint moved) or fails, each batch runs alone, so each runner gets its own
 * result or error. A batch with a recheck (a board's first scores) runs alone at once.
 */
export function createBatchCommitter(deps: {
  db: Db
  logger?: Logger
  /** Test seam: called with the partitions of each group statement that committed. */
  onGroup?: (partitions: number[]) => void
  /** Statements (alone or grouped) in flight at once before batches wait to be grouped. Default 1. */
  maxInFlight?: number
}): BatchCommitter {
  const maxInFlight = deps.maxInFlight ?? 1
  let inFlight = 0
  let waiting: Waiting[] = []
  const alone = (w: Waiting) => context.with(w.ctx, () => commitBatch(deps.db, w.p)).then(w.resolve, w.reject)
  const group = async (ws: Waiting[]) => {
    const links = ws.slice(1).flatMap((w): Link[] => {
      const span = trace.getSpanContext(w.ctx)
      return span ? [{ context: span }] : []
    })
    const results = await context
      .with(ws[0].ctx, () => commitGroup(deps.db, ws.map((w) => w.p), links))
      .catch((err) => void deps.logger?.warn({ err, batches: ws.length }, 'group statement failed; applying its batches alone'))
    if (results) {
      deps.onGroup?.(ws.map((w) => w.p.owner.partition))
      ws.forEach((w, i) => w.resolve(results[i]))
    } else await Promise.all(ws.map(alone))
  }
  const next = () => {
    if (inFlight >= maxInFlight || waiting.length === 0) return
    // A partition's second batch (two runners of it during a hand-over) waits for the next group.
    const taken: Waiting[] = []
    const partitions = new Set<number>()
    const later: Waiting[] = []
    for (const w of waiting) {
      if (partitions.has(w.p.owner.partition)) later.push(w)
      else {
        partitions.add(w.p.owner.partition)
        taken.push(w)
      }
    }
    waiting = later
    // In partition order: the group locks its checkpoint rows in this order (see commitGroup).
    taken.sort((a, b) => a.p.owner.partition - b.p.owner.partition)
    inFlight++
    void (taken.length === 1 ? alone(taken[0]) : group(taken)).finally(() => {
      inFlight--
      next()
    })
  }
  return {
    apply: async (owner, expected, messages, now) => {
      const prepared = await prepareBatch(deps.db, owner, expected, messages, now)
      if ('done' in prepared) return prepared.done
      // One a group cannot take runs alone at once, beside whatever is in flight.
      if (!groupable(prepared)) return commitBatch(deps.db, prepared)
      return new Promise<BatchResult>((resolve, reject) => {
        waiting.push({ p: prepared, ctx: context.active(), resolve, reject })
        next()
      })
    },
  }
}
