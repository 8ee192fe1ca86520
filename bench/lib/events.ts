import { dedupIdOf, partitionOf, subjects } from '../../core/events'
import { nowMs } from './stats'

/**
 * A score event with a unique player (so every event is a change and a new row), its send time as
 * the score (so the subscriber can compute latency from the update), spread over 8 boards.
 */
export function scoreEvent(run: string, i: number, boards = 8) {
  return { id: `${run}-${i}`, type: 'score.submitted' as const, data: { board: `b${i % boards}`, player: `${run}-${i}`, score: nowMs() } }
}

/**
 * The same event as Fanfare stores it (published with the ingest token), with its subject, for raw
 * JetStream publishes; `id` is its de-duplication id (the msgID).
 */
export function storedScore(prefix: string, partitions: number, run: string, i: number) {
  const e = { ...scoreEvent(run, i), by: 'ingest' }
  const subject = subjects.event(prefix, partitionOf(`${e.data.board}/${e.data.player}`, partitions), e.type)
  return { subject, id: dedupIdOf(e), body: JSON.stringify({ ...e, v: 1, at: new Date().toISOString() }) }
}

export const BOARDS = Array.from({ length: 8 }, (_, i) => `leaderboard:b${i}`)
