/**
 * Cost amplification from outside: what one client's cheap frames make a node do (events appended
 * to the event stream, Postgres transactions, presence messages over NATS), with the default
 * limits. One real node (startTestNode), real WebSockets, real NATS and Postgres.
 *
 *   flock /tmp/bench.lock node_modules/.bin/bun bench/amplify-probe.ts [seconds] [scenario...]
 *
 * Scenarios (each on a fresh node, after the seat watcher's warm-up):
 * - toggle: one user socket subscribes to `match:<random id>` and unsubscribes, as fast as its
 *   limits let it.
 * - signin: anonymous sockets subscribe to 100 `match:<random id>` each, sign in with the user's
 *   token (`auth`), unsubscribe from all, close; a new socket each round.
 * - resume: one anonymous socket resumes `leaderboard:hot` (1,000 kept change runs) one version
 *   behind, unsubscribes, and again, as fast as its limits let it (each resume reads the channel's
 *   kept history from JetStream).
 * - anon-boards: one anonymous socket subscribes to distinct `leaderboard:<random>` channels
 *   (a snapshot read each) and unsubscribes, as fast as its limits let it.
 */
import { connect } from '@nats-io/transport-node'
import postgres from 'postgres'
import { mintUserToken } from '../api/src/auth/mint'
import { startTestNode, type TestNode } from '../api/src/test-support'
import { TEST_NATS_URL } from '../core/testing/env'
import { WsClient } from '../test/e2e/harness'
import { startTestWorker } from '../stream-workers/src/testing/harness'
import { jetstreamManager } from '@nats-io/jetstream'
import { topology } from '../core/nats'

const seconds = Number(process.argv[2] ?? 5)
/** Scenarios to run (the rest of the arguments); all when none. */
const only = process.argv.slice(3)
const rnd = () => Math.random().toString(36).slice(2, 10)

type Counts = { frames: number; accepted: number; refused: number; closed: number }

async function measure(name: string, n: TestNode, run: (deadline: number, c: Counts) => Promise<void>) {
  const pg = postgres(n.env.vars.DATABASE_URL, { max: 1, onnotice: () => {} })
  const xacts = async () => {
    await Bun.sleep(1200) // stats are flushed by each backend at most once a second
    const [r] = await pg`select xact_commit + xact_rollback as x from pg_stat_database where datname = current_database()`
    return Number(r.x)
  }
  const nc = await connect({ servers: TEST_NATS_URL })
  let presenceMsgs = 0
  let presenceBytes = 0
  const sub = nc.subscribe(`${n.env.config.FANFARE_SUBJECT_PREFIX}.presence.>`, {
    callback: (_e, m) => {
      presenceMsgs++
      presenceBytes += m.data.length
    },
  })
  // Idle baseline: what the node does on its own over the same time.
  const idle0 = await xacts()
  const e0 = await n.streamCount()
  const p0 = presenceMsgs
  await Bun.sleep(seconds * 1000)
  const idle = (await xacts()) - idle0 - 1
  const idleEvents = (await n.streamCount()) - e0
  const idlePresence = presenceMsgs - p0

  const x0 = await xacts()
  const s0 = await n.streamCount()
  const m0 = presenceMsgs
  const b0 = presenceBytes
  const c: Counts = { frames: 0, accepted: 0, refused: 0, closed: 0 }
  const started = performance.now()
  await run(Date.now() + seconds * 1000, c)
  const took = (performance.now() - started) / 1000
  await Bun.sleep(3000) // the seat watcher's publishes land
  const events = (await n.streamCount()) - s0
  const tx = (await xacts()) - x0 - 1
  sub.unsubscribe()
  await nc.close()
  await pg.end()
  const per = (v: number) => (v / took).toFixed(1)
  console.log(
    JSON.stringify({
      scenario: name,
      seconds: Number(took.toFixed(1)),
      clientFrames: c.frames,
      clientFramesPerSec: per(c.frames),
      acceptedSubscribes: c.accepted,
      refused: c.refused,
      socketsClosedByServer: c.closed,
      eventsAppended: events,
      eventsPerSec: per(events),
      eventsPerClientFrame: (events / Math.max(1, c.frames)).toFixed(2),
      pgTransactions: tx,
      pgTransactionsIdleSameTime: idle,
      presenceMsgs: presenceMsgs - m0,
      presenceBytes: presenceBytes - b0,
      presenceMsgsIdleSameTime: idlePresence,
      idleEvents,
    }),
  )
}

async function withNode(name: string, fn: (n: TestNode) => Promise<void>) {
  if (only.length > 0 && !only.includes(name)) return
  const n = await startTestNode()
  try {
    await Bun.sleep(3500) // the seat watcher's warm-up
    await fn(n)
  } finally {
    await n.close()
  }
}

console.log(JSON.stringify({ load: (await Bun.file('/proc/loadavg').text()).trim(), seconds }))

await withNode('toggle', async (n) => {
  const token = await mintUserToken(n.env.vars.FANFARE_JWT_SECRET, { sub: 'attacker' })
  await measure('toggle', n, async (deadline, c) => {
    const ws = await WsClient.open(`${n.wsUrl}?token=${token}`)
    let i = 0
    while (Date.now() < deadline && !ws.closed) {
      const ch = `match:${rnd()}`
      ws.send({ op: 'subscribe', ref: `s${i}`, channel: ch })
      c.frames += 2
      await until(() => ws.frames.some((f) => (f.channel === ch && f.op === 'snapshot') || (f.ref === `s${i}` && f.op === 'error')) || ws.closed !== undefined)
      const err = ws.frames.find((f) => f.ref === `s${i}` && f.op === 'error')
      if (err) {
        c.refused++
        await Bun.sleep(err.error.retryAfterMs ?? 50)
      } else c.accepted++
      ws.send({ op: 'unsubscribe', ref: `u${i}`, channel: ch })
      await ws.reply(`u${i}`).catch(() => undefined)
      ws.frames.length = 0
      i++
    }
    if (ws.closed) c.closed++
    ws.close()
  })
})

await withNode('signin', async (n) => {
  const token = await mintUserToken(n.env.vars.FANFARE_JWT_SECRET, { sub: 'attacker' })
  await measure('signin', n, async (deadline, c) => {
    let round = 0
    while (Date.now() < deadline) {
      let ws: WsClient
      try {
        ws = await WsClient.open(n.wsUrl)
      } catch {
        c.refused++
        await Bun.sleep(200)
        continue
      }
      const channels = Array.from({ length: 100 }, () => `match:${rnd()}`)
      channels.forEach((ch, i) => ws.send({ op: 'subscribe', ref: `s${round}-${i}`, channel: ch }))
      c.frames += 100
      await until(() => ws.frames.filter((f) => f.op === 'snapshot' || f.op === 'error').length >= 100 || ws.closed !== undefined)
      c.accepted += ws.frames.filter((f) => f.op === 'snapshot').length
      ws.send({ op: 'auth', ref: `a${round}`, token })
      c.frames++
      const authed = await ws.reply(`a${round}`).catch(() => undefined)
      if (authed?.op !== 'authed') c.refused++
      if (!ws.closed) {
        for (const ch of channels) ws.send({ op: 'unsubscribe', channel: ch })
        c.frames += 100
      } else c.closed++
      await Bun.sleep(20)
      ws.close()
      round++
    }
  })
})

await withNode('anon-boards', async (n) => {
  await measure('anon-boards', n, async (deadline, c) => {
    const ws = await WsClient.open(n.wsUrl)
    let i = 0
    while (Date.now() < deadline && !ws.closed) {
      const ch = `leaderboard:${rnd()}`
      ws.send({ op: 'subscribe', ref: `s${i}`, channel: ch })
      c.frames += 2
      await until(() => ws.frames.some((f) => (f.channel === ch && f.op === 'snapshot') || (f.ref === `s${i}` && f.op === 'error')))
      const err = ws.frames.find((f) => f.ref === `s${i}` && f.op === 'error')
      if (err) {
        c.refused++
        await Bun.sleep(err.error.retryAfterMs ?? 50)
      } else c.accepted++
      ws.send({ op: 'unsubscribe', channel: ch })
      ws.frames.length = 0
      i++
    }
    ws.close()
  })
})

await withNode('resume', async (n) => {
  const worker = await startTestWorker(n.env)
  try {
    // 1,000 change runs of one board: one score at a time, each projected before the next.
    const ingest = n.env.vars.FANFARE_INGEST_TOKEN
    for (let i = 0; i < 1000; i++) {
      await fetch(`${n.base}/v1/events`, {
        method: 'POST',
        headers: { authorization: `Bearer ${ingest}`, 'content-type': 'application/json' },
        body: JSON.stringify({ events: [{ id: `hot-${i}`, type: 'score.submitted', data: { board: 'hot', player: `p${i % 50}`, score: i } }] }),
      })
      if (i % 10 === 9) await Bun.sleep(5)
    }
    const jsm = await jetstreamManager(n.nc)
    const stream = topology(n.env.config).changeStreams.leaderboard
    let version = 0
    let epoch = ''
    const probe = await WsClient.open(n.wsUrl)
    await until(() => {
      probe.frames.length = 0
      return true
    })
    for (let tries = 0; tries < 200 && version < 990; tries++) {
      probe.send({ op: 'subscribe', ref: 'p', channel: 'leaderboard:hot' })
      await until(() => probe.frames.some((f) => f.op === 'snapshot'))
      const snap = probe.frames.find((f) => f.op === 'snapshot')
      version = snap.version
      epoch = snap.epoch
      probe.send({ op: 'unsubscribe', channel: 'leaderboard:hot' })
      probe.frames.length = 0
      if (version < 990) await Bun.sleep(100)
    }
    probe.close()
    const runs = (await jsm.streams.info(stream)).state.messages
    console.log(JSON.stringify({ setup: 'leaderboard:hot', version, keptRuns: runs }))
    const before = { ...n.nc.stats() }
    let resumes = 0
    await measure('resume', n, async (deadline, c) => {
      const ws = await WsClient.open(n.wsUrl)
      let i = 0
      while (Date.now() < deadline && !ws.closed) {
        ws.send({ op: 'subscribe', ref: `s${i}`, channel: 'leaderboard:hot', since: version - 1, epoch })
        c.frames += 2
        await until(() => ws.frames.some((f) => f.op === 'subscribed' || f.op === 'snapshot' || (f.ref === `s${i}` && f.op === 'error')) || ws.closed !== undefined)
        const err = ws.frames.find((f) => f.ref === `s${i}` && f.op === 'error')
        if (err) {
          c.refused++
          await Bun.sleep(err.error.retryAfterMs ?? 50)
        } else {
          c.accepted++
          if (ws.frames.some((f) => f.op === 'subscribed')) resumes++
        }
        ws.send({ op: 'unsubscribe', channel: 'leaderboard:hot' })
        ws.frames.length = 0
        i++
      }
      ws.close()
    })
    const after = n.nc.stats()
    console.log(JSON.stringify({ scenario: 'resume', recovered: resumes, nodeNatsInMsgs: after.inMsgs - before.inMsgs, nodeNatsInBytes: after.inBytes - before.inBytes, inMsgsPerResume: ((after.inMsgs - before.inMsgs) / Math.max(1, resumes)).toFixed(0) }))
  } finally {
    await worker.stop()
  }
})

process.exit(0)

async function until(fn: () => boolean, timeoutMs = 10_000) {
  const end = Date.now() + timeoutMs
  while (!fn()) {
    if (Date.now() > end) throw new Error('timed out')
    await Bun.sleep(2)
  }
}
