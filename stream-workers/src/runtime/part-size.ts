import { sqlStateOf } from './errors'

/** SQLSTATE query_canceled: statement_timeout (or an operator's pg_cancel_backend). */
const STATEMENT_TIMEOUT = '57014'

/**
 * Timeouts in a row before the part is halved. One may be a busy moment; a second in a row says
 * the part is too big for statement_timeout, and retrying it at the same size would be canceled
 * forever, stalling its partition (or the rebuild).
 */
const TIMEOUTS_BEFORE_SPLIT = 2

/**
 * Statements committed at the limit, with no timeout in between, before the limit doubles. A part
 * at the limit takes at least about half the timeout (twice as many were canceled), so a probe
 * that is canceled again (two timeouts, then halved back) wastes at most 2 timeouts per 32 parts
 * at the limit: about 12% of the time at worst. Growing lets a raised statement_timeout, or a
 * database that was only busy, get whole batches back.
 */
const COMMITS_BEFORE_GROWING = 32

/** What a statement timeout means for the next part (see PartSize.failed). */
export type Timeout = 'again' | 'split' | 'alone'

/**
 * How many messages one batch statement takes, learned from statement timeouts: all of them until
 * Postgres cancels a statement for statement_timeout (57014) twice in a row, then half of that
 * part, down to one event. The smaller size is kept for the next batches (each full batch would
 * otherwise be canceled and halved again, a timeout per halving, every batch), and doubles again
 * after COMMITS_BEFORE_GROWING statements committed at it. Only the size changes: the caller
 * applies the parts in stream order, each under the checkpoint guard, and never skips one.
 *
 * One per live runner (its partition), one per rebuild, and one per group committer (the events of
 * one group statement, see createBatchCommitter).
 */
export type PartSize = {
  /** How many of `available` messages the next statement takes (at least one). */
  next: (available: number) => number
  /**
   * A statement of `size` messages failed with `err`. Undefined when it is not a statement
   * timeout (the count of timeouts in a row starts over); otherwise `again` (the first in a row:
   * the same size is tried again), `split` (the next parts take half of `size`) or `alone` (one
   * event alone was canceled again: it is retried, never skipped; the caller says it is stalled).
   */
  failed: (err: unknown, size: number) => Timeout | undefined
  /**
   * A statement of `size` messages committed. `available`: how many there were to take when it was
   * sized (next's argument; default `size`, what a caller that takes all next gives passes). It
   * counts toward growing when the limit held it back, `available` at or past the limit: the
   * group committer's statements are made of whole batches, so one held back is often below the
   * limit (or one batch alone) and still says the limit fits.
   */
  committed: (size: number, available?: number) => void
}

/**
 * A PartSize with no limit yet; `onTimeout` is told of every statement timeout (a metric).
 * `timeoutsBeforeSplit` (default TIMEOUTS_BEFORE_SPLIT, 2): the group committer halves at the
 * first, since it never tries a canceled statement again (its batches go alone, and progress), so
 * a second chance would only cost one more statement_timeout, and with several of its statements
 * in flight at once "in a row" has no order.
 */
export function createPartSize(onTimeout?: () => void, timeoutsBeforeSplit = TIMEOUTS_BEFORE_SPLIT): PartSize {
  let limit = Infinity
  let timeouts = 0
  let atLimit = 0
  return {
    next: (available) => Math.max(1, Math.min(available, limit)),
    failed: (err, size) => {
      if (sqlStateOf(err) !== STATEMENT_TIMEOUT) {
        timeouts = 0
        return undefined
      }
      onTimeout?.()
      atLimit = 0
      if (++timeouts < timeoutsBeforeSplit) return 'again'
      timeouts = 0
      if (size <= 1) return 'alone'
      limit = Math.ceil(size / 2)
      return 'split'
    },
    committed: (size, available = size) => {
      timeouts = 0
      // A smaller part the limit did not hold back (the end of a batch, a small batch) says
      // nothing about the limit.
      if (available < limit) return
      if (++atLimit < COMMITS_BEFORE_GROWING) return
      atLimit = 0
      limit *= 2
    },
  }
}
