import { JetStreamApiError, JetStreamError, type ApiError, type JetStreamManager } from '@nats-io/jetstream'
import { RequestError, type NatsConnection } from '@nats-io/transport-node'

/** What a page of `<api prefix>.CONSUMER.NAMES` answers. */
type NamesPage = { total: number; offset: number; limit: number; consumers: string[] | null; error?: ApiError }

/**
 * The names of a stream's consumers, page after page of `<api prefix>.CONSUMER.NAMES.<stream>`
 * (nats.js offers only `consumers.list`, which answers every consumer's info). An info makes
 * nats-server count the consumer's pending messages, a walk of the stream's blocks for its filter;
 * names cost nothing. Every runner looks for its predecessors when it opens a consumer, so a worker
 * starting its 48 runners on a stream with a backlog asked for 48 x 48 infos at once: nats-server
 * 2.9 answers a connection's JetStream requests in that connection's read loop, which spent seconds
 * on them (`Readloop processing time: 4.7s`), every request of the worker behind them timed out
 * (its partition leases' renewals too), and the runners reset and listed again: on a loaded machine
 * the worker applied nothing for tens of seconds after a restart (bench/fault-soak.ts, workers
 * fault).
 *
 * A plain request on `nc`, with `jsm`'s API prefix (its JetStream domain's, `$JS.<domain>.API`, when
 * it was made with one) and timeout. Errors as the manager's own requests: JetStream's answer
 * `error` is a `JetStreamApiError` (its `code`, e.g. 10059 stream not found, 10008 temporarily
 * unavailable), no answer in time the request's `TimeoutError`, no responder at all (no JetStream
 * there) a `JetStreamError` "jetstream is not enabled".
 */
export async function consumerNames(nc: NatsConnection, jsm: JetStreamManager, stream: string): Promise<string[]> {
  const { apiPrefix, timeout } = jsm.getOptions()
  const subject = `${apiPrefix}.CONSUMER.NAMES.${stream}`
  const names: string[] = []
  for (;;) {
    const page = await request(nc, subject, { offset: names.length }, timeout ?? 5000)
    const consumers = page.consumers ?? []
    names.push(...consumers)
    if (consumers.length === 0 || names.length >= page.total) return names
  }
}

async function request(nc: NatsConnection, subject: string, body: unknown, timeout: number): Promise<NamesPage> {
  let page: NamesPage
  try {
    page = (await nc.request(subject, JSON.stringify(body), { timeout })).json<NamesPage>()
  } catch (err) {
    if (err instanceof RequestError && err.isNoResponders()) throw new JetStreamError('jetstream is not enabled', { cause: err })
    throw err
  }
  if (page.error) throw new JetStreamApiError(page.error)
  return page
}
