import { createInbox, headers as natsHeaders, PermissionViolationError, type Msg, type MsgHdrs, type NatsConnection, type Subscription } from '@nats-io/transport-node'

/**
 * One message for a stream. `msgId` is its Nats-Msg-Id: JetStream stores a message whose id it
 * already stored within the stream's duplicate window only once, and acknowledges it `duplicate`.
 * `headers` are the message's own (a traceparent), in place of the batch's; `msgId` is set on them.
 */
export type StreamMessage = { subject: string; body: string | Uint8Array; msgId?: string; headers?: MsgHdrs }

/**
 * JetStream's acknowledgement of a stored message: the stream and its domain, the sequence, and
 * whether its Nats-Msg-Id was already stored within the stream's duplicate window (then `seq` is
 * the first copy's and nothing was stored again).
 */
export type StreamAck = { stream: string; seq: number; duplicate: boolean; domain?: string }

/**
 * What became of a publish: which messages JetStream acknowledged (by index; `acks[i]` is set
 * exactly when `stored[i]`), and why not all.
 */
export type PublishOutcome = { stored: boolean[]; acks: (StreamAck | undefined)[]; error?: Error }

/**
 * JetStream publishes of many messages at once (a batch's change runs). Each message is a plain
 * publish whose reply subject names its batch and index; the acknowledgements all arrive at one
 * subscription of the connection, and a batch has one timer. `js.publish` makes a request per
 * message instead (a request object, a timer, a promise, and an empty header that JetStream then
 * stores with the message): measured (bench/store-cost-probe.ts, 30,000 runs, 2,000 in flight)
 * ~3x the publisher's CPU and ~10% more nats-server CPU. What a message promises is the same: it
 * is stored once its acknowledgement arrives, and a message not acknowledged within the timeout may
 * or may not be stored.
 */
export type AckedPublisher = {
  /**
   * Publishes `messages` in the given order (one connection: JetStream stores them in that order)
   * and resolves once each was acknowledged, refused, or `timeoutMs` passed. Never rejects:
   * `error` says why a message is not `stored` (the first refusal, or the timeout).
   */
  publish: (messages: readonly StreamMessage[], opts?: { headers?: MsgHdrs; timeoutMs?: number }) => Promise<PublishOutcome>
  /** Stops taking acknowledgements; batches in flight resolve with what was acknowledged. */
  close: () => void
}

type Batch = { messages: readonly StreamMessage[]; acks: (StreamAck | undefined)[]; left: number; error?: Error; done: () => void }

const decoder = new TextDecoder()

/**
 * An AckedPublisher on `nc`. `timeoutMs` (default 5 s, as nats.js' JetStream client) bounds each
 * batch. The subscription is made on the first publish and kept (nats.js restores it after a
 * reconnect). When the connection drops, every batch in flight ends at once with what was
 * acknowledged: the acknowledgements of what it sent went to the lost connection, so waiting could
 * only end in its timeout, and callers (a client resending with the same ids, the outbox sweeper)
 * would wait that long even if NATS were back in a second. What was sent may still be stored, as
 * after a timeout.
 */
export function createAckedPublisher(nc: NatsConnection, defaults: { timeoutMs?: number } = {}): AckedPublisher {
  const inbox = createInbox()
  const batches = new Map<number, Batch>()
  let sub: Subscription | undefined
  let next = 0
  let closed = false

  const endAll = (why: string | Error) => {
    for (const b of [...batches.values()]) {
      b.error ??= typeof why === 'string' ? new Error(why) : why
      b.done()
    }
  }
  // nats-server drops a publish the user may not make and says so only in an async error: the
  // batches holding one would wait out their timeout, and nothing would say why.
  const endDenied = (err: PermissionViolationError) => {
    for (const b of [...batches.values()]) {
      if (!b.messages.some((m) => m.subject === err.subject)) continue
      b.error ??= new PublishDenied(err.subject)
      b.done()
    }
  }
  void (async () => {
    for await (const s of nc.status()) {
      if (closed) return
      if (s.type === 'disconnect' || s.type === 'close') endAll('NATS connection lost before JetStream acknowledged')
      else if (s.type === 'error' && s.error instanceof PermissionViolationError && s.error.operation === 'publish') endDenied(s.error)
    }
  })()

  // NATS denying the acknowledgement subscription (the user's subscribe on _INBOX.> taken away by a
  // config reload) ends it: no acknowledgement can arrive, so the batches in flight end now, saying
  // why (what was sent may be stored), and the next publish subscribes again (granted by then, it
  // works again; still denied, it fails as fast).
  const onAckSubscriptionFailed = (err: Error) => {
    const failed = sub
    sub = undefined
    if (failed && !failed.isClosed()) failed.unsubscribe()
    endAll(err instanceof PermissionViolationError ? new AcksDenied(err.subject) : `the acknowledgement subscription failed: ${err.message}`)
  }

  const onAck = (m: Msg) => {
    const dot = m.subject.lastIndexOf('.')
    const id = Number(m.subject.slice(inbox.length + 1, dot))
    const batch = batches.get(id)
    if (!batch) return // its batch timed out
    const i = Number(m.subject.slice(dot + 1))
    if (batch.acks[i]) return
    const ack = ackOf(m)
    if (ack instanceof Error) batch.error ??= ack
    else batch.acks[i] = ack
    if (--batch.left === 0) batch.done()
  }

  return {
    publish: (messages, opts = {}) => {
      if (messages.length === 0) return Promise.resolve({ stored: [], acks: [] })
      // A connection closing or draining ends its subscriptions first (nats.js marks it closed only
      // later): the acknowledgements have nowhere to arrive, and a publish would wait out its
      // timeout unanswered (a client answered 503 after 5 s instead of at once).
      if (nc.isClosed() || nc.isDraining() || sub?.isClosed()) return Promise.resolve(notSent(messages, new Error('NATS connection is closed')))
      sub ??= nc.subscribe(`${inbox}.>`, {
        callback: (err, m) => {
          if (err) return onAckSubscriptionFailed(err)
          onAck(m)
        },
      })
      const id = next++
      const batch: Batch = { messages, acks: new Array(messages.length).fill(undefined), left: messages.length, done: () => {} }
      return new Promise<PublishOutcome>((resolve) => {
        const timeout = opts.timeoutMs ?? defaults.timeoutMs ?? 5000
        const timer = setTimeout(() => {
          batch.error ??= new Error(`JetStream acknowledged ${batch.acks.filter(Boolean).length} of ${messages.length} messages within ${timeout} ms`)
          batch.done()
        }, timeout)
        batch.done = () => {
          clearTimeout(timer)
          batches.delete(id)
          // `stored` is derived from `acks`: one array is kept, the outcome gives both.
          resolve({ stored: batch.acks.map((a) => a !== undefined), acks: batch.acks, ...(batch.error ? { error: batch.error } : {}) })
        }
        batches.set(id, batch)
        const options: { reply: string; headers?: MsgHdrs } = opts.headers ? { reply: '', headers: opts.headers } : { reply: '' }
        let sent = 0
        try {
          for (; sent < messages.length; sent++) {
            const m = messages[sent]
            options.reply = `${inbox}.${id}.${sent}`
            const headers = m.msgId === undefined ? m.headers : withMsgId(m.headers ?? copyOf(opts.headers), m.msgId)
            nc.publish(m.subject, m.body, headers ? { reply: options.reply, headers } : options)
          }
        } catch (err) {
          // A closed connection sends nothing more: the messages not sent can never be acknowledged,
          // and the acknowledgements of those sent have nowhere to arrive, so waiting would only end
          // in the timeout (a client answered 503 after 5 s instead of at once).
          batch.error ??= err as Error
          batch.left -= messages.length - sent
          if (batch.left <= 0 || nc.isClosed()) batch.done()
        }
      })
    },
    close: () => {
      closed = true
      sub?.unsubscribe()
      sub = undefined
      endAll('publisher closed')
    },
  }
}

/** The outcome of messages none of which was sent. */
function notSent(messages: readonly StreamMessage[], error: Error): PublishOutcome {
  return { stored: messages.map(() => false), acks: messages.map(() => undefined), error }
}

function withMsgId(h: MsgHdrs, id: string): MsgHdrs {
  h.set('Nats-Msg-Id', id)
  return h
}

/** A header set of its own for one message, with the batch's headers when there are some. */
function copyOf(batch: MsgHdrs | undefined): MsgHdrs {
  const h = natsHeaders()
  if (batch) for (const k of batch.keys()) for (const v of batch.values(k)) h.append(k, v)
  return h
}

/**
 * JetStream's refusal of a message, with its error code (`err_code`, e.g. 10023 insufficient
 * resources): the message is not stored.
 */
export class JetStreamRefused extends Error {
  constructor(
    readonly errCode: number,
    readonly description: string,
  ) {
    super(`JetStream refused the message: ${description} (${errCode})`)
    this.name = 'JetStreamRefused'
  }
}

/**
 * NATS refused this connection's user a subject (a permissions violation): nats-server dropped the
 * message, nothing was stored.
 */
export class PublishDenied extends Error {
  constructor(readonly subject: string) {
    super(`NATS does not let this connection publish to ${subject} (Permissions Violation): grant the user in NATS_URL publish on it`)
    this.name = 'PublishDenied'
  }
}

/**
 * NATS refused this connection's user the subscription JetStream's acknowledgements arrive on (its
 * inbox): messages sent may or may not be stored, and none can be confirmed until it is granted.
 */
export class AcksDenied extends Error {
  constructor(readonly subject: string) {
    super(`NATS does not let this connection subscribe on ${subject} (Permissions Violation), where JetStream's acknowledgements arrive: grant the user in NATS_URL subscribe on _INBOX.>`)
    this.name = 'AcksDenied'
  }
}

/**
 * Whether `err` is JetStream refusing a message for want of room: the server's (or account's)
 * JetStream storage is used up (10023 insufficient resources), or the stream is at a cap an
 * operator set with the discard policy `new` (10077 maximum messages/bytes exceeded). Only an
 * operator freeing storage or raising the cap ends it.
 */
export const isStorageFull = (err: unknown): err is JetStreamRefused =>
  err instanceof JetStreamRefused && (err.errCode === 10023 || (err.errCode === 10077 && /maximum (messages|bytes).* exceeded/.test(err.description)))

/**
 * A message's PubAck, or why JetStream did not store it: an error answer, or a status without a
 * body (503: no stream listens on the subject).
 */
function ackOf(m: Msg): StreamAck | Error {
  if (m.data.length === 0) return new Error(`JetStream did not store the message: status ${m.headers?.code ?? 'none'} ${m.headers?.description ?? ''}`.trim())
  const ack = JSON.parse(decoder.decode(m.data)) as Partial<StreamAck> & { error?: { code: number; err_code?: number; description: string } }
  if (ack.error) return new JetStreamRefused(ack.error.err_code ?? ack.error.code, ack.error.description)
  if (typeof ack.seq !== 'number' || typeof ack.stream !== 'string' || ack.stream === '') return new Error(`JetStream answered without a stream and sequence: ${decoder.decode(m.data)}`)
  return { stream: ack.stream, seq: ack.seq, duplicate: ack.duplicate === true, ...(ack.domain ? { domain: ack.domain } : {}) }
}
