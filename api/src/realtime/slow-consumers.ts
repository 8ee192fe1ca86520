import { CLOSE } from './close-codes'

/** What the check needs of an open socket (Bun's ServerWebSocket). */
export type QueuedSocket = { close: (code: number, reason: string) => void; getBufferedAmount: () => number; readyState: number }

export type SlowConsumers = {
  /** After a direct send to one socket: Bun's result (-1 queued, 0 dropped) checks that socket at once. */
  sent: (ws: QueuedSocket, result: number) => void
  /** After a publish to a topic: Bun's result (-1: some subscriber has a queue) and what was sent. */
  published: (topic: string, text: string, result: number) => void
}

/**
 * Closes sockets whose unsent queue passed `limit` bytes with 4008 and a reason (the close frame
 * follows what is queued), before Bun's backstop at twice the limit would cut them without one.
 *
 * Checked only where a queue can grow, and never by walking a whole channel per publish: with
 * 19,000 subscribers on one channel, one client that stops reading made every publish report
 * backpressure, and a walk of every member each time cost more than the fan-out itself.
 * - A direct send that reports a queue (-1) or a drop (0) checks its socket at once.
 * - A publish that reports one checks a few of the topic's members, round-robin, so that the whole
 *   topic is checked once per `budget` bytes published to it while it reports backpressure
 *   (members x bytes / budget checks per publish: about 0.02 per delivery for 100-byte frames).
 *   A socket's queue grows only by what is sent to it while Bun reports backpressure, so between
 *   two checks it grows by at most `budget` (plus one frame) per channel it is on; `budget` is the
 *   limit over twice the most channels a socket may be on, so a socket is closed before it passes
 *   1.5x the limit (frames larger than the budget: every member is checked at each publish).
 * - A publish that reports no backpressure (> 0: none of the topic's sockets has a queue) forgets
 *   the topic's cursor.
 */
export function createSlowConsumers(deps: {
  limit: number
  /** Most channels one socket may be on. */
  maxSubscriptions: number
  /** Ids of the sockets on a topic (the hub's members of a channel). */
  members: (topic: string) => ReadonlySet<string>
  socket: (id: string) => QueuedSocket | undefined
}): SlowConsumers {
  const budget = Math.max(1, Math.floor(deps.limit / (2 * deps.maxSubscriptions)))
  /** Per topic under backpressure: where its round-robin check is, and the checks owed to it. */
  const cursors = new Map<string, { members: ReadonlySet<string>; at: Iterator<string>; owed: number }>()

  const closeIfSlow = (ws: QueuedSocket | undefined) => {
    if (ws && ws.readyState === 1 && ws.getBufferedAmount() > deps.limit) ws.close(CLOSE.SLOW_CONSUMER, 'slow consumer: reconnect and resume')
  }

  return {
    sent: (ws, result) => {
      if (result <= 0) closeIfSlow(ws)
    },
    published: (topic, text, result) => {
      if (result > 0) {
        if (cursors.size > 0) cursors.delete(topic)
        return
      }
      const members = deps.members(topic)
      if (members.size === 0) return
      let c = cursors.get(topic)
      // A Set's iterator is live (it skips deleted members and reaches added ones); a new Set is
      // a new state of the channel: start over.
      if (!c || c.members !== members) cursors.set(topic, (c = { members, at: members.values(), owed: 0 }))
      c.owed = Math.min(members.size, c.owed + (members.size * Buffer.byteLength(text)) / budget)
      let checks = Math.floor(c.owed)
      c.owed -= checks
      let wrapped = false
      while (checks > 0) {
        const next = c.at.next()
        if (next.done) {
          if (wrapped) break // emptied meanwhile
          wrapped = true
          c.at = members.values()
          continue
        }
        checks--
        closeIfSlow(deps.socket(next.value))
      }
    },
  }
}
