// What one retention-watch tick costs nats-server (bench/findings.md, "Retention watch"): a direct
// get with `next_by_subj` per projection and partition, on a private nats-server holding a large
// event stream. Run: flock /tmp/bench.lock bun bench/retention-watch-probe.ts [messages]
import { jetstream, jetstreamManager, type MsgRequest } from '@nats-io/jetstream'
import { connect } from '@nats-io/transport-node'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { privateNats } from '../test/cluster/private-nats'
import { freePort } from '../test/e2e/harness'

const N = Number(process.argv[2] ?? 1_000_000)
const PARTITIONS = 8
const AREAS = ['score', 'chat', 'stream', 'poll', 'reaction', 'match']
const storeDir = mkdtempSync(join(tmpdir(), 'retention-probe-'))
const nats = privateNats({ port: freePort(), storeDir })
await nats.start()
const nc = await connect({ servers: nats.url })
try {
  const jsm = await jetstreamManager(nc)
  await jsm.streams.add({ name: 'EV', subjects: ['p.ev.>'] })
  const js = jetstream(nc)
  const body = new Uint8Array(200)
  // One event of every area and partition first (a projection's last applied event, long ago), then
  // score events only: the other areas' filters match nothing after their checkpoint.
  let inFlight: Promise<unknown>[] = []
  for (const area of AREAS) for (let p = 0; p < PARTITIONS; p++) await js.publish(`p.ev.${p}.${area}.x`, body)
  const started = performance.now()
  for (let i = 0; i < N; i++) {
    inFlight.push(js.publish(`p.ev.${i % PARTITIONS}.score.submitted`, body))
    if (inFlight.length >= 1000) {
      await Promise.all(inFlight)
      inFlight = []
    }
  }
  await Promise.all(inFlight)
  const { state } = await jsm.streams.info('EV')
  console.log(`stored ${state.messages} messages in ${((performance.now() - started) / 1000).toFixed(1)} s`)

  const get = (filter: string, seq: number) => jsm.streams.getMessage('EV', { seq, next_by_subj: filter } as unknown as MsgRequest)
  const timed = async (label: string, fn: () => Promise<unknown>, runs = 20) => {
    const ms: number[] = []
    for (let r = 0; r < runs; r++) {
      const t = performance.now()
      await fn()
      ms.push(performance.now() - t)
    }
    ms.sort((a, b) => a - b)
    console.log(`${label}: median ${ms[Math.floor(runs / 2)].toFixed(2)} ms, max ${ms[runs - 1].toFixed(2)} ms (${runs} runs)`)
  }
  const tail = state.last_seq - 1000
  await timed('dense filter near the tail (a lagging score partition)', () => get('p.ev.3.score.>', tail))
  await timed('dense filter, nothing after (a caught-up score partition)', () => get('p.ev.3.score.>', state.last_seq + 1))
  await timed('sparse filter from the start (a caught-up poll partition: scans the stream)', () => get('p.ev.3.poll.>', PARTITIONS * AREAS.length + 1))
  await timed(
    `one tick: ${AREAS.length} projections x ${PARTITIONS} partitions, score near the tail, the others caught up`,
    async () => {
      for (const area of AREAS) {
        for (let p = 0; p < PARTITIONS; p++) await get(`p.ev.${p}.${area}.>`, area === 'score' ? tail : PARTITIONS * AREAS.length + 1)
      }
    },
    5,
  )
  // What the watch does from its second tick on (absentBelow): a caught-up partition is read from
  // where the previous tick's read ended, so it covers what arrived since (here 10,000 events).
  const before = state.last_seq
  for (let i = 0; i < 10_000; i++) inFlight.push(js.publish(`p.ev.${i % PARTITIONS}.score.submitted`, body))
  await Promise.all(inFlight)
  inFlight = []
  const newTail = (await jsm.streams.info('EV')).state.last_seq - 1000
  await timed(
    `a later tick (10,000 events since the previous one): the caught-up partitions read from ${before + 1}`,
    async () => {
      for (const area of AREAS) {
        for (let p = 0; p < PARTITIONS; p++) await get(`p.ev.${p}.${area}.>`, area === 'score' ? newTail : before + 1)
      }
    },
    5,
  )
} finally {
  await nc.close()
  await nats.stop()
  rmSync(storeDir, { recursive: true, force: true })
}
