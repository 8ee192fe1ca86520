/**
 * Baseline for end to end: the bare minimum pipeline. A raw JetStream pull consumer on the event
 * stream, one batched Postgres upsert per batch (no checkpoint, no outbox, no versions), then a raw
 * Bun server.publish of each change to WebSocket subscribers of the board's channel. Prints
 * {"ready":true,"port"}; exits on SIGTERM.
 */
import { AckPolicy, jetstream, jetstreamManager, type JsMsg } from '@nats-io/jetstream'
import { connect } from '@nats-io/transport-node'
import postgres from 'postgres'
import { childConfig, reply } from '../lib/child'
import { serveTopics } from './topics'

const cfg = childConfig<{ port: number; natsUrl: string; stream: string; pgUrl: string }>()
const sql = postgres(cfg.pgUrl, { max: 2, onnotice: () => {} })
await sql`create table if not exists bare_scores (board text not null, player text not null, score float8 not null, primary key (board, player))`
const nc = await connect({ servers: cfg.natsUrl, name: 'bare-pipeline' })
const jsm = await jetstreamManager(nc)
await jsm.consumers.add(cfg.stream, { durable_name: 'bare', ack_policy: AckPolicy.Explicit, max_ack_pending: 20_000 })
const consumer = await jetstream(nc).consumers.get(cfg.stream, 'bare')

const server = serveTopics(cfg.port)

async function flush(batch: JsMsg[]) {
  const events = batch.map((m) => m.json<{ data: { board: string; player: string; score: number } }>().data)
  await sql`insert into bare_scores (board, player, score)
    select board, player, score from jsonb_to_recordset((${JSON.stringify(events)}::text)::jsonb) as t(board text, player text, score float8)
    on conflict (board, player) do update set score = greatest(bare_scores.score, excluded.score)`
  for (let i = 0; i < events.length; i++) {
    const e = events[i]
    const channel = `leaderboard:${e.board}`
    server.publish(channel, JSON.stringify({ op: 'update', channel, version: batch[i].seq, epoch: 'bare', data: { player: e.player, score: e.score, previous: null } }))
    batch[i].ack()
  }
}

const messages = await consumer.consume({ max_messages: 2000 })
void (async () => {
  let batch: JsMsg[] = []
  for await (const m of messages) {
    batch.push(m)
    if (batch.length >= 500 || m.info.pending === 0) {
      const b = batch
      batch = []
      await flush(b)
    }
  }
})().catch((err) => {
  console.error('bare pipeline failed:', err)
  process.exit(1)
})
reply({ ready: true, port: server.port })
process.on('SIGTERM', async () => {
  server.stop(true)
  await messages.close()
  await nc.close()
  await sql.end({ timeout: 2 })
  process.exit(0)
})
