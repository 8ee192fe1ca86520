/**
 * Replaying a dead letter: the API asks, over core NATS request/reply, the runner that owns the
 * dead letter's projection and partition (only it may write there without racing its batches).
 */

/** `<prefix>.admin.replay.<projection>.<partition>`: only the worker process running that runner answers. */
export const replaySubject = (prefix: string, projection: string, partition: number) => `${prefix}.admin.replay.${projection}.${partition}`

/** What every worker process listens on (one subscription each), and how to read a subject of it. */
export const replaySubjects = (prefix: string) => `${prefix}.admin.replay.*.*`
export const parseReplaySubject = (subject: string): { projection: string; partition: number } => {
  const [projection, partition] = subject.split('.').slice(-2)
  return { projection, partition: Number(partition) }
}

/**
 * `actor`: who asked (a principal id). The runner then records the replay in the audit log in the
 * replay's own transaction, and says so (`audited`): an answer the API stopped waiting for still
 * leaves its audit entry. Without it (an API node of an earlier version) the API records it.
 */
export type ReplayRequest = { id: number; actor?: string }

/** The runner's answer, JSON. */
export type ReplayReply =
  /** Applied now, and the dead letter is gone. `audited`: recorded in the audit log with it (see ReplayRequest). */
  | { outcome: 'replayed'; audited?: true }
  /** Still cannot apply: nothing changed but the dead letter's reason, now this one. */
  | { outcome: 'still_failing'; reason: string; audited?: true }
  /** No such dead letter (already replayed or discarded). */
  | { outcome: 'not_found' }
  /**
   * Not now: nothing changed; try again. Without a code, the runner is starting or lost the
   * partition (try again now). `rebuild_in_progress`: a rebuild of the projection has not switched
   * in yet, and its switch would undo the replay (try again after it).
   */
  | { outcome: 'unavailable'; message: string; code?: 'rebuild_in_progress' }
