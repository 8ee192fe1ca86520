/**
 * Baseline for the REST ingest hop: the least a Bun server can do to store a POSTed batch of events
 * in JetStream and answer once it is stored. `Bun.serve`, `request.json()`, one plain publish per
 * event with its Nats-Msg-Id through core/acked-publish (what Fanfare's ingest uses), 202 with each
 * event's seq. No auth, validation, limits or tracing. Prints {"ready":true,"port"}; exits on SIGTERM.
 */
import { connect } from '@nats-io/transport-node'
import { createAckedPublisher } from '../../core/acked-publish'
import { childConfig, reply } from '../lib/child'

const cfg = childConfig<{ port: number; natsUrl: string }>()
const nc = await connect({ servers: cfg.natsUrl, name: 'bare-ingest' })
const publisher = createAckedPublisher(nc)

const server = Bun.serve({
  port: cfg.port,
  hostname: '127.0.0.1',
  async fetch(req) {
    const body = (await req.json()) as { events: { id: string; subject: string; event: object }[] }
    const at = new Date().toISOString()
    const outcome = await publisher.publish(body.events.map((e) => ({ subject: e.subject, body: JSON.stringify({ ...e.event, at }), msgId: e.id })))
    if (outcome.error) return Response.json({ error: String(outcome.error) }, { status: 503 })
    return Response.json({ results: outcome.acks.map((a, i) => ({ id: body.events[i].id, seq: a?.seq, duplicate: a?.duplicate })) }, { status: 202 })
  },
})
reply({ ready: true, port: server.port })
process.on('SIGTERM', async () => {
  server.stop(true)
  await nc.close()
  process.exit(0)
})
