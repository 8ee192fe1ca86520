import { eq, sql, type SQL } from 'drizzle-orm'
import { recordset } from '../../../core/db/recordset'
import { deadLetters } from '../../../core/db/schema'

/** A stream message that can never apply, with why. */
export type DeadLetter = {
  projection: string
  partition: number
  streamSeq: number
  subject: string
  eventId: string | null
  reason: string
  payload: string
  /** When JetStream stored the message: the time a replay applies it at (see replayDeadLetter). */
  storedAt: Date
}

/**
 * The insert of a batch's dead letters, for the batch statement (runs only `when` its guard held):
 * they count as applied (the checkpoint moves past them) and never block the messages after them.
 */
export function deadLetterWrite(letters: DeadLetter[], when: SQL): SQL {
  const rows = letters.map((l) => ({
    projection: l.projection,
    partition: l.partition,
    stream_seq: l.streamSeq,
    subject: storable(l.subject),
    event_id: l.eventId === null ? null : storable(l.eventId),
    reason: storable(l.reason),
    payload: storable(l.payload),
    stored_at: l.storedAt.toISOString(),
  }))
  const columns = { projection: 'text', partition: 'integer', stream_seq: 'bigint', subject: 'text', event_id: 'text', reason: 'text', payload: 'text', stored_at: 'timestamptz' }
  return sql`insert into ${deadLetters} (projection, partition, stream_seq, subject, event_id, reason, payload, stored_at)
    select projection, partition, stream_seq, subject, event_id, reason, payload, stored_at from ${recordset('l', columns, rows)} where ${when}`
}

/**
 * Text Postgres can store: a NUL character or a lone surrogate (a poison message may hold anything)
 * becomes U+FFFD, as invalid UTF-8 already has when the body was decoded. Failing to store a dead
 * letter would stop the partition, the very thing dead letters exist to prevent.
 */
const storable = (s: string) => s.replace(/\u0000|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, '\uFFFD')

/** The event id of an undecodable body, when it still has one: helps admins find the sender. */
export function guessEventId(body: string): string | null {
  try {
    const parsed = JSON.parse(body) as { id?: unknown }
    return typeof parsed?.id === 'string' && parsed.id.length > 0 ? parsed.id.slice(0, 128) : null
  } catch {
    return null
  }
}

/**
 * The outcome of replaying dead letter `id`, for the batch statement (runs only `when` its guard
 * held): it applied now, so it is deleted; or it failed again (`reason`), and keeps the new reason.
 */
export function replayOutcomeWrite(id: number, reason: string | undefined, when: SQL): SQL {
  if (reason === undefined) return sql`delete from ${deadLetters} where ${eq(deadLetters.id, id)} and ${when}`
  return sql`update ${deadLetters} set reason = ${storable(reason)} where ${eq(deadLetters.id, id)} and ${when}`
}
