import type { DeliveryInfo, JsMsg } from '@nats-io/jetstream'
import { createInbox, type Msg, type NatsConnection } from '@nats-io/transport-node'

/** What a runner uses of a delivery: a JsMsg from nats.js' fetch, or one that pullNow made. */
export type Delivery = Pick<JsMsg, 'seq' | 'subject' | 'data' | 'headers' | 'info' | 'timestampNanos' | 'ack' | 'working'>

/**
 * A delivery's place from its reply subject, as nats.js reads it (`parseInfo`, which it does not
 * export): `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<delivery seq>.<time>.<pending>`,
 * or with `<domain>.<account hash>` after `$JS.ACK` and maybe a token at the end (newer servers).
 * Undefined when it is not a JetStream delivery's reply. (The change feed reads only its two
 * sequences, without a split: `sequencesOf`, once per run an API node receives.)
 */
export function deliveryInfoOf(reply: string | undefined): DeliveryInfo | undefined {
  if (!reply?.startsWith('$JS.ACK.')) return undefined
  const t = reply.split('.')
  if (t.length === 9) t.splice(2, 0, '_', '')
  if (t.length < 11) return undefined
  const deliveryCount = Number(t[6])
  return {
    domain: t[2] === '_' ? '' : t[2],
    account_hash: t[3],
    stream: t[4],
    consumer: t[5],
    deliveryCount,
    redelivered: deliveryCount > 1,
    streamSequence: Number(t[7]),
    deliverySequence: Number(t[8]),
    timestampNanos: Number(t[9]),
    pending: Number(t[10]),
  }
}

const ACK = new TextEncoder().encode('+ACK')
const WORKING = new TextEncoder().encode('+WPI')

/**
 * When JetStream stored a delivery, exactly, as JsMsg's `timestampNanos` reads it: the reply's time
 * token as a bigint. `info.timestampNanos` is that 19-digit number as a float, rounded to 256 ns
 * (a message stored in the last ~128 ns before midnight reads as midnight).
 */
function storedNanosOf(reply: string, info: DeliveryInfo): bigint {
  const t = reply.split('.')
  const token = t[t.length === 9 ? 7 : 9]
  return token !== undefined && /^\d+$/.test(token) ? BigInt(token) : BigInt(Math.round(info.timestampNanos))
}

/** A delivery of a pull's message `m` whose reply subject gave `info` (deliveryInfoOf). */
export function deliveryOf(m: Msg, info: DeliveryInfo): Delivery {
  let acked = false
  return {
    seq: info.streamSequence,
    subject: m.subject,
    data: m.data,
    headers: m.headers,
    info,
    timestampNanos: storedNanosOf(m.reply ?? '', info),
    // As JsMsg's: once; "working" as often as needed.
    ack: () => void (!acked && ((acked = true), m.respond(ACK))),
    working: () => void (!acked && m.respond(WORKING)),
  }
}

/**
 * One pull of up to `max` messages of what the pull consumer `consumer` holds NOW (`no_wait`):
 * nats-server delivers what is stored, up to `max`, and ends the request at once after the last
 * one (a 408 status) or when there is none (404), so no request is left waiting at the server
 * (part-used, or for events not stored yet). nats.js 3's `fetch` has no `no_wait`.
 * Resolves with the deliveries in order; `err` when the request ended another way (a status the
 * pull does not expect, or nothing within `timeoutMs` of the request or of the last delivery: a
 * slow server still delivering is not given up on) with what it delivered before. Rejects
 * when the connection is closed (nothing was asked: the runner recreates its consumer, as after a
 * failed fetch).
 *
 * `expiresMs`: the server ends the request itself (a 408) if it has delivered nothing by then.
 * For a pull that finds nothing while the consumer's `num_pending` says more is there: nats-server
 * 2.9.10 keeps counting a message removed from the stream (retention, a delete) before its
 * delivery, and parks such a pull, silent, until the next event is stored. Ended by the server, not
 * by `timeoutMs`, the request is gone when the pull resolves: no later delivery can go to an inbox
 * nobody reads. Without it a no_wait pull that finds nothing ends at once (a 404) only when the
 * server's count is 0. A pull past `expiresMs` that was still being delivered is cut short by the
 * server, silently, between two deliveries (it delivers nothing more for it): `timeoutMs` ends it.
 */
export function pullNow(
  nc: NatsConnection,
  o: { apiPrefix: string; stream: string; consumer: string; max: number; timeoutMs: number; expiresMs?: number },
): Promise<{ msgs: Delivery[]; err?: Error }> {
  const inbox = createInbox()
  const msgs: Delivery[] = []
  return new Promise((resolve) => {
    let timer: ReturnType<typeof setTimeout> | undefined
    const arm = () => {
      clearTimeout(timer)
      timer = setTimeout(() => end(new Error(`no_wait pull: no end within ${o.timeoutMs} ms of the request or the last delivery (${msgs.length} of at most ${o.max} delivered)`)), o.timeoutMs)
    }
    const end = (err?: Error) => {
      clearTimeout(timer)
      sub.unsubscribe()
      resolve(err ? { msgs, err } : { msgs })
    }
    const sub = nc.subscribe(inbox, {
      callback: (err, m) => {
        if (err) return end(err)
        const info = deliveryInfoOf(m.reply)
        if (!info) {
          const code = m.headers?.code ?? 0
          // 404 No Messages, 408 Request Timeout (the end of what was there) or Requests Pending.
          if (code === 404 || code === 408) return end()
          if (code === 100) return // an idle heartbeat (none asked for)
          return end(new Error(`no_wait pull ended with status ${code} ${m.headers?.description ?? ''}`.trim()))
        }
        msgs.push(deliveryOf(m, info))
        if (msgs.length >= o.max) end()
        else arm()
      },
    })
    // Armed once the subscription is (a closed connection's subscribe throws: the pull rejects, and
    // no timer is left to end a subscription that never was); its callback runs in a later turn.
    arm()
    try {
      const request = o.expiresMs ? { batch: o.max, no_wait: true, expires: o.expiresMs * 1_000_000 } : { batch: o.max, no_wait: true }
      nc.publish(`${o.apiPrefix}.CONSUMER.MSG.NEXT.${o.stream}.${o.consumer}`, JSON.stringify(request), { reply: inbox })
    } catch (err) {
      end(err instanceof Error ? err : new Error(String(err)))
    }
  })
}
