import { context, trace, type Context, type Link } from '@opentelemetry/api'
import type { Db } from '../../../core/db/client'
import type { Logger } from '../../../core/logger'
import { commitBatch, commitGroup, groupable, prepareBatch, type ApplyOptions, type BatchMessage, type BatchOwner, type BatchResult, type PreparedBatch } from './batch'
import { createPartSize } from './part-size'

/**
 * Applies the batches of one projection's runners in one process (see createBatchCommitter):
 * `apply` has applyBatch's semantics and errors, batch by batch.
 */
export type BatchCommitter = {
  apply: (owner: BatchOwner, expected: number, messages: BatchMessage[], now: Date, opts?: Pick<ApplyOptions, 'trace' | 'ready'>) => Promise<BatchResult>
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
 *
 * Each batch fits in statement_timeout (its runner splits it, see PartSize), but several together
 * may not: the events of one group statement are limited by a PartSize of the committer's own, so
 * a group canceled once halves what the next ones take (whole batches, in the order they
 * became ready; one at least, alone; the batches ready go in as many statements as that takes, at
 * once), and it grows back as the runners' sizes do. Without it every group was canceled again
 * (19 to 23 times in 25 s, statement-timeout.int.test.ts), a statement_timeout wasted each time
 * with every other batch waiting behind it.
 */
export function createBatchCommitter(deps: {
  db: Db
  logger?: Logger
  /** Test seam: called with the partitions of each group statement that committed. */
  onGroup?: (partitions: number[]) => void
  /**
   * Statements (alone or grouped) in flight at once before batches wait to be grouped. Default 1.
   * The statements the group limit splits the batches ready into all go at once, so more may be.
   */
  maxInFlight?: number
  /** Told of every group statement Postgres canceled for statement_timeout (a metric). */
  onTimeout?: () => void
}): BatchCommitter {
  const maxInFlight = deps.maxInFlight ?? 1
  let inFlight = 0
  let waiting: Waiting[] = []
  // Events per group statement, learned from its timeouts. Batches alone are their runners' to
  // learn from: their errors (and timeouts) go back to them.
  const sizes = createPartSize(deps.onTimeout, 1)
  const eventsOf = (ws: Waiting[]) => ws.reduce((n, w) => n + w.p.fresh.length, 0)
  /** Resolves whether the batch committed (its result or error goes to its runner). */
  const alone = (w: Waiting) =>
    commitBatch(deps.db, w.p, w.ctx).then(
      (r) => (w.resolve(r), true),
      (err) => (w.reject(err), false),
    )
  /** `available`: the events of the batches the group could have taken (see PartSize.committed). */
  const group = async (ws: Waiting[], available: number) => {
    const links = ws.slice(1).flatMap((w): Link[] => {
      const span = trace.getSpanContext(w.ctx)
      return span ? [{ context: span }] : []
    })
    const events = eventsOf(ws)
    const results = await commitGroup(deps.db, ws.map((w) => w.p), links, ws[0].ctx).catch((err) => {
      const line = { err, batches: ws.length, size: events }
      if (sizes.failed(err, events) === undefined) deps.logger?.warn(line, 'group statement failed; applying its batches alone')
      else deps.logger?.warn({ ...line, nextSize: sizes.next(events) }, 'a group statement outlasts statement_timeout; applying its batches alone, and grouping fewer events from now on')
    })
    if (results) {
      sizes.committed(events, available)
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
    // Whole batches in the order they became ready, as many per statement as the group's limit
    // takes (one at least). The statements run at once, side by side: held back by the limit, a
    // batch waiting for the next group would only wait (each alone is what applies without a
    // committer).
    const available = eventsOf(taken)
    const limit = sizes.next(available)
    const statements: Waiting[][] = []
    for (let i = 0, events = Infinity; i < taken.length; i++) {
      const n = taken[i].p.fresh.length
      if (events + n > limit) {
        statements.push([])
        events = 0
      }
      statements[statements.length - 1].push(taken[i])
      events += n
    }
    for (const ws of statements) {
      // In partition order: the group locks its checkpoint rows in this order (see commitGroup).
      ws.sort((a, b) => a.p.owner.partition - b.p.owner.partition)
      inFlight++
      const statement =
        ws.length > 1
          ? group(ws, available)
          : // Held back by the limit, one alone that commits tells the limit it fits.
            alone(ws[0]).then((ok) => void (ok && statements.length > 1 && sizes.committed(eventsOf(ws), available)))
      void statement.finally(() => {
        inFlight--
        next()
      })
    }
  }
  return {
    apply: async (owner, expected, messages, now, opts = {}) => {
      // The batch's trace context: given (see tracedBatch), or the active one.
      const ctx = opts.trace ?? context.active()
      const prepared = await prepareBatch(deps.db, owner, expected, messages, now, opts)
      await opts.ready
      if ('done' in prepared) return prepared.done
      // One a group cannot take runs alone at once, beside whatever is in flight.
      if (!groupable(prepared)) return commitBatch(deps.db, prepared, ctx)
      return new Promise<BatchResult>((resolve, reject) => {
        waiting.push({ p: prepared, ctx, resolve, reject })
        next()
      })
    },
  }
}
