import { afterAll, describe, expect, test } from 'bun:test'
import postgres from 'postgres'
import { mintUserToken } from '../../api/src/auth/mint'
import { openLeaseBucketIfExists, workersView } from '../../core/leases'
import { connectNats } from '../../core/nats'
import { createTestEnv, type TestEnv } from '../../core/testing/env'
import { freePort, spawnProc, until, waitReady, WsClient, type Proc } from '../e2e/harness'

const STREAMS = ['show-a', 'show-b', 'show-c']
const EMOJIS = ['👏', '❤️', '🔥', '😂', '🇫🇷', '👍🏽', '👩‍👩‍👧', '1️⃣']
const USERS = 150
const PER_USER = 40
const WINDOW_MS = 500
const PARTITIONS = 4

type Totals = Record<string, number>

/**
 * What a subscriber of `reactions:<stream>` holds, kept as a client would: the snapshot's totals,
 * then each update's totals on top. Also checks, frame by frame, that every update continues the
 * previous frame (from = previous version + 1, same epoch), and sums the updates' counts.
 */
function follow(frames: any[]) {
  let totals: Totals = {}
  let version = -1
  let epoch = ''
  const counts: Totals = {}
  const gaps: string[] = []
  let resyncs = 0
  let updates = 0
  for (const f of frames) {
    if (f.op === 'snapshot') {
      if (f.resync) resyncs++
      totals = { ...f.data.totals }
      version = f.version
      epoch = f.epoch
    } else if (f.op === 'update') {
      updates++
      const from = f.from ?? f.version
      if (from !== version + 1 || (epoch !== '' && f.epoch !== epoch)) gaps.push(`${epoch}:${version} -> ${f.epoch}:${from}..${f.version}`)
      version = f.version
      epoch = f.epoch
      Object.assign(totals, f.data.totals)
      for (const [emoji, n] of Object.entries(f.data.counts as Totals)) counts[emoji] = (counts[emoji] ?? 0) + n
    }
  }
  return { totals, counts, gaps, resyncs, updates }
}

/**
 * The reactions promise with real processes: an API node and two workers on the real Postgres and
 * NATS; 150 users send 40 reactions each over WebSocket (default rate limits: a refused reaction is
 * sent again after the wait, an unanswered one again with its id, and every 8th again after its
 * ack, as after a lost ack); one worker is SIGKILLed mid-way and another started. The totals must equal the reactions acknowledged (none lost, none twice), and
 * each subscriber of reactions:<stream> must get gap-free frames, at most one per window, whose
 * totals end equal to the read model.
 */
describe('reactions oracle: many users over WebSocket, a worker SIGKILLed', () => {
  let env: TestEnv | undefined
  const procs: Proc[] = []
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop('SIGKILL')))
    await env?.cleanup()
  })

  test('totals = acknowledged reactions exactly; subscribers get one gap-free frame per window ending at the totals', async () => {
    env = await createTestEnv({
      FANFARE_PARTITIONS: String(PARTITIONS),
      FANFARE_LEASE_TTL_MS: '2000',
      FANFARE_REACTION_WINDOW_MS: String(WINDOW_MS),
      // All the viewers connect from this one address at once; their publish limits stay the defaults.
      FANFARE_IP_CONNECT_BURST: '1000',
      LOG_LEVEL: 'warn',
    })
    const vars = env.vars
    const port = freePort()
    const base = `http://127.0.0.1:${port}`
    const api = spawnProc('api', 'api/src/main.ts', { ...vars, PORT: String(port), HOST: '127.0.0.1' })
    const worker = (name: string) => spawnProc(name, 'stream-workers/src/main.ts', vars)
    const workers = [worker('worker-1'), worker('worker-2')]
    procs.push(api, ...workers)
    await waitReady(base, procs)
    // Both workers hold partitions, so the one killed is applying some.
    const nc = await connectNats(vars.NATS_URL, 'reactions-oracle')
    try {
      await until(
        'two workers sharing the partitions',
        async () => {
          const kv = await openLeaseBucketIfExists(nc, env!.config)
          const view = kv ? (await workersView(kv)).filter((w) => w.partitions.length > 0) : []
          return view.length === 2 && view.reduce((n, w) => n + w.partitions.length, 0) === PARTITIONS
        },
        30_000,
        100,
      )
    } finally {
      await nc.close()
    }

    const ws = `ws://127.0.0.1:${port}/v1/ws`
    const subscribers = await Promise.all(
      STREAMS.map(async (stream) => {
        const c = await WsClient.open(ws)
        c.send({ op: 'subscribe', ref: 's', channel: `reactions:${stream}` })
        await until('snapshot', () => c.of(`reactions:${stream}`).length === 1)
        return c
      }),
    )

    // The oracle: every reaction the API acknowledged (an ack with duplicate: true is a resend of
    // one already stored: counted once, by id).
    const acked = new Map<string, { stream: string; emoji: string }>()
    let refusedForRate = 0
    let resent = 0
    const resends = new Set<string>()
    const started = Date.now()
    const user = async (u: number) => {
      const token = await mintUserToken(vars.FANFARE_JWT_SECRET, { sub: `viewer-${u}` })
      const c = await WsClient.open(`${ws}?token=${token}`)
      let ref = 0
      for (let j = 0; j < PER_USER; j++) {
        const event = { id: `r-${u}-${j}`, type: 'reaction.sent', data: { stream: STREAMS[(u + j) % STREAMS.length], emoji: EMOJIS[(u * 7 + j) % EMOJIS.length] } }
        for (;;) {
          const r = `${u}-${ref++}`
          c.send({ op: 'publish', ref: r, event })
          const answer = await c.reply(r, 15_000).catch(() => undefined)
          if (answer?.op === 'ack') {
            acked.set(answer.id, event.data)
            // Every 8th reaction is sent again as a client would after a lost ack: the same id,
            // stored again in another batch; the projection must count it once.
            if (j % 8 === 0 && !resends.has(event.id)) {
              resends.add(event.id)
              continue
            }
            break
          }
          if (answer?.error?.code === 'rate_limited') {
            refusedForRate++
            await Bun.sleep(answer.error.retryAfterMs)
          } else if (answer === undefined || answer.error?.code === 'unavailable' || answer.error?.code === 'overloaded') {
            resent++
            await Bun.sleep(200)
          } else {
            throw new Error(`reaction ${event.id}: ${JSON.stringify(answer)}`)
          }
        }
        await Bun.sleep(50 + ((u * 31 + j * 17) % 100))
      }
      c.close()
    }
    const sending = Promise.all(Array.from({ length: USERS }, (_, u) => user(u)))
    // Mid-way: one worker dies without a word, and a replacement starts a moment later.
    await until('a third of the reactions acknowledged', () => acked.size >= (USERS * PER_USER) / 3, 60_000, 20)
    workers[0].proc.kill('SIGKILL')
    const killedAt = acked.size
    await Bun.sleep(500)
    const replacement = worker('worker-3')
    procs.push(replacement)
    await sending
    const sentMs = Date.now() - started
    expect(acked.size).toBe(USERS * PER_USER)

    const oracle = new Map<string, Totals>()
    for (const { stream, emoji } of acked.values()) {
      const t = oracle.get(stream) ?? {}
      t[emoji] = (t[emoji] ?? 0) + 1
      oracle.set(stream, t)
    }
    const sql = postgres(vars.DATABASE_URL, { max: 1, onnotice: () => {} })
    try {
      const readModel = async (stream: string) => {
        const rows = await sql`select emoji, count from reaction_totals where stream = ${stream}`
        return Object.fromEntries(rows.map((r) => [r.emoji as string, Number(r.count)]))
      }
      for (const stream of STREAMS) {
        await until(`${stream}'s totals to reach the oracle`, async () => JSON.stringify(sortKeys(await readModel(stream))) === JSON.stringify(sortKeys(oracle.get(stream)!)), 60_000, 200).catch(async (err) => {
          throw new Error(`${(err as Error).message}: ${JSON.stringify(await readModel(stream))} vs ${JSON.stringify(oracle.get(stream))}`)
        })
        // Exactly: nothing lost, nothing twice; the REST route answers the same.
        expect(await readModel(stream)).toEqual(oracle.get(stream)!)
        expect(await (await fetch(`${base}/v1/streams/${stream}/reactions`)).json()).toEqual({ stream, totals: oracle.get(stream)! })
      }
      expect(Number((await sql`select count(*)::int as n from dead_letters`)[0].n)).toBe(0)

      // Subscribers: what they hold reaches the read model (the last window flushes after it).
      for (const [i, stream] of STREAMS.entries()) {
        const c = subscribers[i]
        const channel = `reactions:${stream}`
        await until(`${channel} subscriber to hold the totals`, () => JSON.stringify(sortKeys(follow(c.of(channel)).totals)) === JSON.stringify(sortKeys(oracle.get(stream)!)), 20_000, 50).catch(() => {
          throw new Error(`${channel}: subscriber holds ${JSON.stringify(follow(c.of(channel)).totals)}, read model ${JSON.stringify(oracle.get(stream))}`)
        })
        const frames = c.of(channel)
        const seen = follow(frames)
        expect(seen.gaps).toEqual([])
        expect(seen.totals).toEqual(await readModel(stream))
        // Without a resync the updates' counts add up to the totals too (the snapshot was empty).
        if (seen.resyncs === 0) expect(seen.counts).toEqual(oracle.get(stream)!)
        // One frame per window, not one per reaction (nor per worker batch): frames are at least a
        // window apart as sent; on this client's clock allow for delivery jitter.
        const times = frames.map((f) => c.times[c.frames.indexOf(f)]).slice(1)
        const closest = Math.min(...times.slice(1).map((t, k) => t - times[k]))
        const span = times.at(-1)! - times[0]
        console.log(`${channel}: ${Object.values(oracle.get(stream)!).reduce((a, b) => a + b, 0)} reactions, ${seen.updates} frames over ${span} ms, closest ${closest} ms apart, ${seen.resyncs} resyncs`)
        expect(closest).toBeGreaterThanOrEqual(WINDOW_MS - 150)
        expect(seen.updates).toBeLessThanOrEqual(Math.floor(span / (WINDOW_MS - 150)) + 1)
        c.close()
      }
      console.log(`reactions oracle: ${acked.size} reactions from ${USERS} users acknowledged in ${sentMs} ms (worker-1 SIGKILLed at ${killedAt}); ${resends.size} sent twice on purpose, ${refusedForRate} refused for rate and sent again, ${resent} resent unanswered`)
    } finally {
      await sql.end()
    }
  }, 120_000)
})

const sortKeys = (t: Totals) => Object.fromEntries(Object.entries(t).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
