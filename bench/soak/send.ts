import { postAs } from '../../test/cluster/support'

/** A batch still refused after this long is given up (its events counted sent, not acknowledged). */
export const GIVE_UP_MS = 60_000

/** What one area's clients sent and how they were answered. */
export class Tally {
  sent = 0
  acked = 0
  /** Events of batches given up after GIVE_UP_MS: stored or not, nobody knows. */
  givenUp = 0
  /** Batches answered 202 on their first attempt yet with an event reported duplicate: an id mix-up. */
  freshDuplicates = 0
  /** Events of resent batches that JetStream had stored already (de-duplicated). */
  resentDuplicates = 0
  /** Events reported duplicate, on any attempt. */
  duplicates = 0
  /** Answers by status (`202`, `503 unavailable`, `429 rate_limited`, `0 connection`, ...). */
  answers: Record<string, number> = {}
  /** Events acknowledged in each second of the run. */
  perSecond: number[] = []
  /** When the last 202 came (Date.now()), and the longest time between two 202s (or from the tally's making to the first): how long ingest stood still. */
  lastAckAt = Date.now()
  longestSilence = { ms: 0, endedAt: 0 }

  /** One line: sent, acknowledged, given up, reported duplicate, answers. */
  line(): string {
    return `${this.sent} sent, ${this.acked} acknowledged, ${this.givenUp} given up, ${this.duplicates} reported duplicate (${this.resentDuplicates} on a resend of a refused batch); answers ${Object.entries(this.answers).map(([k, v]) => `${k} x${v}`).join(', ')}`
  }

  /**
   * Answers a client should never get: anything but 202 or an ack, a refusal to resend (429, 503,
   * their WebSocket error frames), a cut or unanswered request, a closed socket.
   */
  unexpected(): string[] {
    const expected = /^(202|ack|429 rate_limited|503 \w+|error (rate_limited|unavailable)|0 connection|0 timeout|close \d+)$/
    return Object.keys(this.answers).filter((a) => !expected.test(a)).map((a) => `${a} x${this.answers[a]}`)
  }
}

export type SoakEvent = { id: string; type: string; data: Record<string, unknown> }

/**
 * Posts a batch until it is acknowledged (202), as a client does: waiting as told on 429 and
 * briefly on anything else, resending the same ids (JetStream de-duplicates what was stored).
 * Counts it in `tally`; returns whether it was acknowledged (false: given up after GIVE_UP_MS).
 */
export async function sendUntilAcked(baseUrl: string, token: string, events: SoakEvent[], tally: Tally, startedAt: number): Promise<boolean> {
  tally.sent += events.length
  const giveUpAt = Date.now() + GIVE_UP_MS
  for (let attempts = 1; ; attempts++) {
    const res = await postAs(baseUrl, token, events)
    const label = res.status === 202 ? '202' : `${res.status} ${res.body?.error?.code ?? ''}`.trim()
    tally.answers[label] = (tally.answers[label] ?? 0) + 1
    if (res.status === 202) {
      const duplicates = (res.body.results as { duplicate: boolean }[]).filter((r) => r.duplicate).length
      tally.duplicates += duplicates
      if (attempts === 1 && duplicates > 0) tally.freshDuplicates++
      if (attempts > 1) tally.resentDuplicates += duplicates
      tally.acked += events.length
      const now = Date.now()
      if (now - tally.lastAckAt > tally.longestSilence.ms) tally.longestSilence = { ms: now - tally.lastAckAt, endedAt: now - startedAt }
      tally.lastAckAt = now
      const second = Math.floor((now - startedAt) / 1000)
      tally.perSecond[second] = (tally.perSecond[second] ?? 0) + events.length
      return true
    }
    if (Date.now() > giveUpAt) {
      tally.givenUp += events.length
      return false
    }
    await Bun.sleep(res.status === 429 ? Number(res.body?.error?.details?.retryAfterMs ?? 100) : 250)
  }
}

/** The promises every area's requests keep: no fresh id answered duplicate, no unexpected answer. */
export function tallyFindings(name: string, tally: Tally): { broken: string[]; notes: string[] } {
  const broken: string[] = []
  const notes: string[] = []
  if (tally.freshDuplicates > 0) broken.push(`${name}: ${tally.freshDuplicates} batches with fresh event ids answered duplicate`)
  if (tally.givenUp > 0) notes.push(`${name}: ${tally.givenUp} events given up after ${GIVE_UP_MS / 1000} s of refusals (stored or not: exact checks skipped)`)
  const unexpected = tally.unexpected()
  if (unexpected.length > 0) notes.push(`${name}: unexpected answers: ${unexpected.join(', ')}`)
  return { broken, notes }
}
