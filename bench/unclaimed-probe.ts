/**
 * What a look of the catch of unclaimed messages (stream-workers/src/runtime/unclaimed.ts) costs on
 * a big stream: `events` messages over the claimed subjects of 8 partitions (partitions x event
 * types) and `straySubjects` subjects no projection consumes (one stray each). Prints
 *  - the first look (reads and dead-letters every stray): wall time, requests sent;
 *  - then `looks` steady looks with no new stray, 1,000 new good events before each, then `looks`
 *    back to back (the nats-server's CPU without storing events): wall time of the two stream
 *    infos (the last sequence, then the subject list: that list's size too), of the gets on the stray subjects (readStrays,
 *    which find nothing), this process' CPU and the nats-server's, per look.
 * Run it against a private nats-server so that its CPU is this probe's alone:
 *
 *   nats-server -js -p 4500 -sd /tmp/x &
 *   FANFARE_TEST_NATS_URL=nats://127.0.0.1:4500 flock /tmp/bench.lock bun bench/unclaimed-probe.ts [events=1000000] [straySubjects=40] [looks=50]
 */
import { jetstream, jetstreamManager } from '@nats-io/jetstream'
import { eventTypes, subjects } from '../core/events'
import { createLogger } from '../core/logger'
import { createMetrics } from '../core/metrics'
import { connectNats, ensureStreams, topology } from '../core/nats'
import { claimOf } from '../core/projections'
import { sql } from 'drizzle-orm'
import { connectBunSql, rowsOf } from '../core/db/client'
import { createTestEnv, TEST_NATS_URL } from '../core/testing/env'
import { readStrays, startUnclaimedPoller } from '../stream-workers/src/runtime/unclaimed'
import { cpuOf, natsServerPid } from './lib/child'
import { publishAll } from './lib/fanfare'

const events = Number(process.argv[2] ?? 1_000_000)
const straySubjects = Number(process.argv[3] ?? 40)
const looks = Number(process.argv[4] ?? 50)
const nats = natsServerPid(TEST_NATS_URL)
const load = async () => (await Bun.file('/proc/loadavg').text()).trim()

const env = await createTestEnv({ FANFARE_PARTITIONS: '8' })
const t = topology(env.config)
const nc = await connectNats(env.vars.NATS_URL, 'unclaimed-probe')
const database = await connectBunSql(env.vars.DATABASE_URL, { max: 2 })
try {
  await ensureStreams(nc, env.config)
  const js = jetstream(nc)
  const jsm = await jetstreamManager(nc)
  const claimed = Array.from({ length: 8 }, (_, p) => eventTypes.map((type) => subjects.event(t.prefix, p, type))).flat()
  const body = JSON.stringify({ id: 'x', by: 'probe', type: 'score.submitted', v: 1, data: { board: 'b', player: 'p', score: 1 }, at: new Date().toISOString() })
  const goods = function* (n: number, from: number) {
    for (let i = 0; i < n; i++) yield { subject: claimed[(from + i) % claimed.length], body, id: `g${from + i}` }
  }
  const strays = Array.from({ length: straySubjects }, (_, i) => `${t.prefix}.ev.stray${i}.x`)
  const t0 = performance.now()
  // The strays spread through the stream.
  const chunk = Math.floor(events / straySubjects)
  for (let s = 0; s < straySubjects; s++) {
    await publishAll(js, goods(chunk, s * chunk))
    await js.publish(strays[s], `stray ${s}`)
  }
  const info0 = await jsm.streams.info(t.eventStream, { subjects_filter: subjects.allEvents(t.prefix) })
  const subjectCount = Object.keys(info0.state.subjects ?? {}).length
  console.log(`stored ${info0.state.messages} messages (${(info0.state.bytes / 1024 ** 2).toFixed(0)} MB) on ${subjectCount} subjects in ${((performance.now() - t0) / 1000).toFixed(1)} s; load ${await load()}`)

  const poller = () =>
    startUnclaimedPoller({
      db: database.db,
      jsm,
      logger: createLogger('silent'),
      stream: t.eventStream,
      prefix: t.prefix,
      partitions: t.partitions,
      batchSize: env.config.FANFARE_BATCH_SIZE,
      intervalMs: 600_000,
      onFenced: () => {},
      onFatal: (err) => {
        throw err
      },
      metrics: createMetrics(),
    })
  // The first look (stop waits for it): every stray read and dead-lettered.
  let out = nc.stats().outMsgs
  let t1 = performance.now()
  await poller().stop()
  const [{ n }] = await rowsOf<{ n: number }>(database.db, sql`select count(*)::int as n from dead_letters where projection = 'unclaimed'`)
  console.log(`first look: ${n} dead letters, ${(performance.now() - t1).toFixed(1)} ms, ${nc.stats().outMsgs - out} requests (stream info for the checkpoint, the look's two, ${straySubjects} + ${n} gets)`)

  // Steady looks: what a look does when no stray came (the poller's look, timed in its parts).
  const [{ seq }] = await rowsOf<{ seq: string | number }>(database.db, sql`select seq from projection_checkpoints where projection = 'unclaimed' and partition = 0`)
  const after = Number(seq)
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
  /** `looks` looks; with `publishing`, 1,000 new good events before each (the nats-server's CPU then includes storing them). */
  const steady = async (publishing: boolean) => {
    const infoMs: number[] = []
    const getsMs: number[] = []
    let bytes = 0
    let cpu = 0
    let natsCpu = 0
    for (let l = 0; l < looks; l++) {
      if (publishing) await publishAll(js, goods(1000, events + l * 1000))
      const c0 = process.cpuUsage()
      const n0 = nats ? cpuOf(nats) : Number.NaN
      t1 = performance.now()
      const last = (await jsm.streams.info(t.eventStream)).state.last_seq
      const info = await jsm.streams.info(t.eventStream, { subjects_filter: subjects.allEvents(t.prefix) })
      const t2 = performance.now()
      const found = Object.keys(info.state.subjects ?? {}).filter((s) => !claimOf(s, t.partitions))
      out = nc.stats().outMsgs
      const read = await readStrays(jsm, t.eventStream, found, after, last, env.config.FANFARE_BATCH_SIZE)
      const t3 = performance.now()
      if (read.length > 0 || found.length !== straySubjects || nc.stats().outMsgs - out !== straySubjects) throw new Error(`unexpected look: ${read.length} read, ${found.length} stray subjects`)
      const c = process.cpuUsage(c0)
      cpu += (c.user + c.system) / 1000
      natsCpu += nats ? (cpuOf(nats) - n0) * 1000 : Number.NaN
      infoMs.push(t2 - t1)
      getsMs.push(t3 - t2)
      bytes = JSON.stringify(info.state.subjects).length
    }
    console.log(
      `steady look (${looks}, ${publishing ? '1,000 new good events before each' : 'back to back'}, no stray): the two infos (last sequence, then ${subjectCount}+ subjects) median ${median(infoMs).toFixed(2)} ms (max ${Math.max(...infoMs).toFixed(2)}), subject list ~${(bytes / 1024).toFixed(1)} KB; ` +
        `${straySubjects} gets median ${median(getsMs).toFixed(2)} ms (max ${Math.max(...getsMs).toFixed(2)}); per look: probe CPU ${(cpu / looks).toFixed(2)} ms, nats-server CPU ${(natsCpu / looks).toFixed(1)} ms (10 ms ticks${nats ? '' : '; no private server found'}); load ${await load()}`,
    )
  }
  await steady(true)
  await steady(false)
} finally {
  await database.close()
  await nc.close()
  await env.cleanup()
}
process.exit(0)
