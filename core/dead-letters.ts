/**
 * Replaying a dead letter: the API asks, over core NATS request/reply, the runner that owns the
 * dead letter's projection and partition (only it may write there without racing its batches).
 */

/** `<prefix>.admin.replay.<projection>.<partition>`: each runner listens on its own, in queue group REPLAY_QUEUE. */
export const replaySubject = (prefix: string, projection: string, partition: number) => `${prefix}.admin.replay.${projection}.${partition}`

/** One queue group: if two owners overlap for a moment, only one of them gets a request. */
export const REPLAY_QUEUE = 'replay'

export type ReplayRequest = { id: number }

/** The runner's answer, JSON. */
export type ReplayReply =
  /** Applied now, and the dead letter is gone. */
  | { outcome: 'replayed' }
  /** Still cannot apply: nothing changed but the dead letter's reason, now this one. */
  | { outcome: 'still_failing'; reason: string }
  /** No such dead letter (already replayed or discarded). */
  | { outcome: 'not_found' }
  /** Not now (the runner is starting, or lost the partition): nothing changed; try again. */
  | { outcome: 'unavailable'; message: string }
