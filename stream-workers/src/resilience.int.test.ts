import { afterEach, describe, expect, test } from 'bun:test'
import postgres from 'postgres'
import { eq } from 'drizzle-orm'
import type { LeaderboardChange } from '../../core/channels'
import { channelVersions, chatMessages, leaderboards, projectionCheckpoints } from '../../core/db/schema'
import { jetstreamManager } from '@nats-io/jetstream'
import { deploymentStreams, topology } from '../../core/nats'
import { TEST_PG_URL } from '../../core/testing/env'
import { byChannel, createWorld, publishEvent, readNotices, storedEvent, caughtUp, boardScores, type World } from './testing/harness'
import { until } from '../../core/testing/wait'

let world: World | undefined
afterEach(async () => {
  await world?.close()
  world = undefined
})



describe('stream workers under faults', () => {
  test('Postgres connections killed mid-stream: nothing lost, nothing doubled', async () => {
    const w = (world = await createWorld({ FANFARE_PARTITIONS: '3', FANFARE_BATCH_SIZE: '20' }))
    await w.database.db.insert(leaderboards).values({ board: 'tot', sortOrder: 'desc', operator: 'sum' })
    const workers = await w.startWorker()
    const dbName = new URL(w.env.vars.DATABASE_URL).pathname.slice(1)
    const admin = postgres(TEST_PG_URL, { max: 1, onnotice: () => {} })
    let kills = 0
    let killing = true
    const killer = (async () => {
      while (killing) {
        const r = await admin`SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity WHERE datname = ${dbName} AND pid <> pg_backend_pid()`
        kills += r.filter((x) => x.ok).length
        await Bun.sleep(40)
      }
    })()
    const expected: Record<string, number> = {}
    try {
      for (let i = 1; i <= 300; i++) {
        const player = `p${i % 7}`
        expected[player] = (expected[player] ?? 0) + i
        await publishEvent(w, storedEvent('score.submitted', { board: 'tot', player, score: i }))
        if (i % 3 === 0) await publishEvent(w, storedEvent('chat.message.posted', { room: `r${i % 4}`, user: 'u', text: `m${i}` }))
        if (i % 20 === 0) await Bun.sleep(30)
      }
      await Bun.sleep(500)
    } finally {
      killing = false
      await killer
      await admin.end()
    }
    expect(kills).toBeGreaterThan(3)
    await caughtUp(w)
    expect(await boardScores(w, 'tot')).toEqual(expected)
    expect((await w.database.db.select().from(chatMessages)).length).toBe(100)
    const versions = Object.fromEntries((await w.database.db.select().from(channelVersions)).map((r) => [r.channel, Number(r.version)]))
    expect(versions).toEqual({ 'leaderboard:tot': 300, 'chat:r0': 25, 'chat:r1': 25, 'chat:r2': 25, 'chat:r3': 25 })
    const notices = byChannel(await until('all notices', async () => {
      const n = await readNotices(w)
      return n.length === 400 ? n : undefined
    }))
    for (const [, list] of notices) expect(list.map((n) => n.version)).toEqual(list.map((_, i) => i + 1))
    await workers.stop()
  }, 90_000)

  test('two workers share partitions, apply in order per key exactly once, and take over from each other', async () => {
    const w = (world = await createWorld({ FANFARE_PARTITIONS: '4', FANFARE_BATCH_SIZE: '50' }))
    await w.database.db.insert(leaderboards).values({ board: 'live', sortOrder: 'desc', operator: 'latest' })
    const a = await w.startWorker()
    const b = await w.startWorker()
    await until('both workers to hold partitions', () => a.partitions().length === 2 && b.partitions().length === 2, 15_000)

    const players = Array.from({ length: 12 }, (_, i) => `k${i}`)
    const rounds = 25
    for (let r = 1; r <= rounds; r++) {
      await Promise.all(players.map((player) => publishEvent(w, storedEvent('score.submitted', { board: 'live', player, score: r }))))
    }
    await caughtUp(w)
    expect(await boardScores(w, 'live')).toEqual(Object.fromEntries(players.map((p) => [p, rounds])))
    const [v] = await w.database.db.select().from(channelVersions).where(eq(channelVersions.channel, 'leaderboard:live'))
    expect(Number(v.version)).toBe(players.length * rounds)

    // Every change of a player, in version order, is that player's next score: applied in order, once.
    const notices = await until('all notices', async () => {
      const n = await readNotices(w)
      return n.length === players.length * rounds ? n : undefined
    })
    const list = byChannel(notices).get('leaderboard:live')!
    expect(list.map((n) => n.version)).toEqual(list.map((_, i) => i + 1))
    for (const p of players) {
      const seen = list.map((n) => n.data as LeaderboardChange).filter((d) => d.player === p)
      expect(seen.map((d) => d.score)).toEqual(Array.from({ length: rounds }, (_, i) => i + 1))
    }

    // One worker stops: the other takes its partitions over within a few lease periods.
    await a.stop()
    await until('b to hold every partition', () => b.partitions().length === 4, 4 * 1500)
    for (const player of players) await publishEvent(w, storedEvent('score.submitted', { board: 'live', player, score: 100 }))
    await caughtUp(w)
    expect(await boardScores(w, 'live')).toEqual(Object.fromEntries(players.map((p) => [p, 100])))
    await b.stop()
  }, 90_000)

  test('NATS loses all its data while a worker runs: streams and buckets come back, new events apply', async () => {
    const w = (world = await createWorld({ FANFARE_PARTITIONS: '2' }))
    const workers = await w.startWorker()
    for (let i = 0; i < 6; i++) await publishEvent(w, storedEvent('score.submitted', { board: 'arena', player: `old${i}`, score: i }))
    await caughtUp(w)
    // A NATS restarted without its data volume: every stream and bucket of the deployment is gone.
    const jsm = await jetstreamManager(w.nc)
    const t = topology(w.config)
    for (const stream of deploymentStreams(t)) await jsm.streams.delete(stream)
    // The worker creates them again; events accepted from then on are applied, in the new stream.
    await until('the event stream to exist again', () => jsm.streams.info(t.eventStream).then(() => true, () => false), 20_000)
    for (let i = 0; i < 4; i++) await publishEvent(w, storedEvent('score.submitted', { board: 'arena', player: `new${i}`, score: 100 + i }))
    // new0..new3 hash to both partitions, which apply independently: wait for all four.
    await until('events of the new stream to apply', async () => {
      const scores = await boardScores(w, 'arena')
      return [0, 1, 2, 3].every((i) => scores[`new${i}`] === 100 + i) ? true : undefined
    }, 30_000)
    expect(await boardScores(w, 'arena')).toMatchObject({ old0: 0, old5: 5, new0: 100, new3: 103 })
    await until('the worker to hold its partitions again', () => workers.partitions().length === 2, 20_000)
    await workers.stop()
  }, 90_000)

  test('a recreated lease bucket (revisions back at 1) does not stall the partitions', async () => {
    const w = (world = await createWorld({ FANFARE_PARTITIONS: '4' }))
    await w.database.db.insert(leaderboards).values({ board: 'again', sortOrder: 'desc', operator: 'sum' })
    const send = (n: number) =>
      Promise.all(Array.from({ length: n }, (_, i) => publishEvent(w, storedEvent('score.submitted', { board: 'again', player: `k${i % 4}`, score: 1 }))))
    const first = await w.startWorker()
    await send(8)
    await caughtUp(w)
    await first.stop()
    // A fleet that ran for weeks has lease revisions in the millions; a recreated bucket starts at 1.
    await w.database.db.update(projectionCheckpoints).set({ fence: 1_000_000 })
    const jsm = await jetstreamManager(w.nc)
    await jsm.streams.delete(`KV_${topology(w.config).leaseBucket}`)

    const fresh = await w.startWorker()
    await until('the new worker holds every partition', () => fresh.partitions().length === 4, 15_000)
    await send(8)
    await until('events after the bucket was recreated apply', async () => {
      const scores = await boardScores(w, 'again')
      return Object.values(scores).reduce((a, b) => a + b, 0) === 16
    }, 20_000)
    expect(await boardScores(w, 'again')).toEqual({ k0: 4, k1: 4, k2: 4, k3: 4 })
    await fresh.stop()
  }, 90_000)
})
