import type { Tx } from '../../../core/db/client'
import { deadLetters } from '../../../core/db/schema'
import { chunkForInsert } from '../projections/types'

/** A stream message that can never apply, with why. */
export type DeadLetter = {
  projection: string
  partition: number
  streamSeq: number
  subject: string
  eventId: string | null
  reason: string
  payload: string
}

/**
 * Stores dead letters inside the batch's transaction: they count as applied (the checkpoint moves
 * past them) and never block the messages after them.
 */
export async function recordDeadLetters(tx: Tx, letters: DeadLetter[]): Promise<void> {
  const rows = letters.map((l) => ({
    ...l,
    subject: storable(l.subject),
    eventId: l.eventId === null ? null : storable(l.eventId),
    reason: storable(l.reason),
    payload: storable(l.payload),
  }))
  for (const chunk of chunkForInsert(rows, 7)) {
    if (chunk.length > 0) await tx.insert(deadLetters).values(chunk)
  }
}

/**
 * Text Postgres can store: a NUL character (a poison message may hold any bytes) becomes U+FFFD,
 * as invalid UTF-8 already has when the body was decoded. Failing to store a dead letter would
 * stop the partition, the very thing dead letters exist to prevent.
 */
const storable = (s: string) => s.replaceAll('\u0000', '\uFFFD')

/** The event id of an undecodable body, when it still has one: helps admins find the sender. */
export function guessEventId(body: string): string | null {
  try {
    const parsed = JSON.parse(body) as { id?: unknown }
    return typeof parsed?.id === 'string' && parsed.id.length > 0 ? parsed.id.slice(0, 128) : null
  } catch {
    return null
  }
}
