import { afterEach, describe, expect, test } from 'bun:test'
import { jetstreamManager } from '@nats-io/jetstream'
import { asc, eq } from 'drizzle-orm'
import type { ChangeRun } from '../../../core/channels'
import { changeHistory, changeOutbox, channelVersions } from '../../../core/db/schema'
import { MIN_COMPRESSED_CHARS, runsOfData } from '../../../core/live-batches'
import { topology } from '../../../core/nats'
import { until } from '../../../core/testing/wait'
import { caughtUp, createWorld, holdHistoryLock, publishEvent, storedEvent, type World } from '../testing/harness'
import { historyTouches, LATE_MS, pruneHistory, startHistoryPruner } from './history-pruner'
import { createLogger } from '../../../core/logger'

let world: World | undefined
afterEach(async () => {
  await world?.close()
  world = undefined
})

/** Every message of the chat change stream: its subject, its data as stored and the runs it carries. */
async function chatMessages(w: World): Promise<{ subject: string; data: Uint8Array; runs: ChangeRun[] }[]> {
  const stream = topology(w.config).changeStreams.chat
  const jsm = await jetstreamManager(w.nc)
  const n = (await jsm.streams.info(stream)).state.messages
  if (n === 0) return []
  const out: { subject: string; data: Uint8Array; runs: ChangeRun[] }[] = []
  const consumer = await w.js.consumers.get(stream)
  for await (const m of await consumer.fetch({ max_messages: n, expires: 5_000 })) out.push({ subject: m.subject, data: m.data, runs: runsOfData(m.data) })
  return out
}

/** Posts `perRoom` messages in each of `rooms` rooms before the worker starts (its first batch holds them), and waits for every change to be published. */
async function batchOfRooms(w: World, rooms: number, perRoom: number) {
  for (let r = 0; r < rooms; r++) {
    for (let i = 0; i < perRoom; i++) await publishEvent(w, storedEvent('chat.message.posted', { room: `r${r}`, user: `user-${r}`, text: `message ${i} in room ${r}: ${'words '.repeat(8)}` }, `r${r}-${i}`))
  }
  await w.startWorker()
  await caughtUp(w)
  return until('every change published', async () => {
    const m = await chatMessages(w)
    return m.flatMap((x) => x.runs).reduce((n, r) => n + r.changes.length, 0) === rooms * perRoom ? m : undefined
  })
}
const ZSTD_MAGIC = [0x28, 0xb5, 0x2f, 0xfd]
const startsWithZstd = (data: Uint8Array) => ZSTD_MAGIC.every((b, i) => data[i] === b)

describe('live batches (a new deployment; one from before them where said)', () => {
  test('a batch touching several channels is ONE message on its partition subject, and its runs stay in change_history after the outbox is emptied', async () => {
    const w = (world = await createWorld({ FANFARE_PARTITIONS: '1' }))
    // Stored before the worker starts: its first batch holds all of them.
    const rooms = ['r1', 'r2', 'r3', 'r4', 'r5']
    for (const room of rooms) for (let i = 0; i < 3; i++) await publishEvent(w, storedEvent('chat.message.posted', { room, user: 'ann', text: `${room}-${i}` }, `${room}-${i}`))
    await w.startWorker()
    await caughtUp(w)
    const messages = await until('every change published', async () => {
      const m = await chatMessages(w)
      return m.flatMap((x) => x.runs).reduce((n, r) => n + r.changes.length, 0) === 15 ? m : undefined
    })
    const prefix = w.config.FANFARE_SUBJECT_PREFIX
    expect(new Set(messages.map((m) => m.subject))).toEqual(new Set([`${prefix}.changes.chat._batch.0`]))
    // Fewer messages than channels: at least one carries several channels' runs.
    expect(messages.length).toBeLessThan(rooms.length)
    expect(Math.max(...messages.map((m) => new Set(m.runs.map((r) => r.channel)).size))).toBeGreaterThan(1)
    // Every channel's versions, gap-free, in message order.
    for (const room of rooms) {
      const versions = messages.flatMap((m) => m.runs.filter((r) => r.channel === `chat:${room}`).flatMap((r) => r.changes.map((_, i) => r.version + i)))
      expect(versions).toEqual([1, 2, 3])
    }
    // The outbox is emptied once published; the history keeps the runs, as published.
    await until('the outbox emptied', async () => (await w.database.db.select().from(changeOutbox)).length === 0)
    const history = await w.database.db.select().from(changeHistory).orderBy(asc(changeHistory.channel), asc(changeHistory.version))
    expect(history.map((h) => JSON.parse(h.payload) as ChangeRun)).toEqual(
      messages.flatMap((m) => m.runs).sort((a, b) => (a.channel < b.channel ? -1 : a.channel > b.channel ? 1 : a.version - b.version)),
    )
  })

  test('compressed (the latest format): a batch message of MIN_COMPRESSED_CHARS or more is a zstd frame of its runs; a deployment of the last version (batches, not compressed) gets JSON', async () => {
    const w = (world = await createWorld({ FANFARE_PARTITIONS: '1' }))
    const messages = await batchOfRooms(w, 20, 2)
    expect(messages.some((m) => startsWithZstd(m.data))).toBe(true)
    for (const m of messages) {
      const json = JSON.stringify({ runs: m.runs })
      // Compressed exactly when long enough to gain, and then far shorter than its JSON.
      expect(startsWithZstd(m.data)).toBe(json.length >= MIN_COMPRESSED_CHARS)
      if (startsWithZstd(m.data)) expect(m.data.length).toBeLessThan(json.length / 2)
    }
    for (let r = 0; r < 20; r++) {
      const versions = messages.flatMap((m) => m.runs.filter((x) => x.channel === `chat:r${r}`).flatMap((x) => x.changes.map((_, i) => x.version + i)))
      expect(versions).toEqual([1, 2])
    }
    await world.close()
    const old = (world = await createWorld({ FANFARE_PARTITIONS: '1' }, { changes: 'batches' }))
    const plain = await batchOfRooms(old, 20, 2)
    expect(plain.some((m) => JSON.stringify({ runs: m.runs }).length >= MIN_COMPRESSED_CHARS)).toBe(true)
    for (const m of plain) expect(m.data[0]).toBe('{'.charCodeAt(0))
  })

  test('a deployment from before live batches: one message per run on the channel subject, nothing kept in change_history', async () => {
    const w = (world = await createWorld({ FANFARE_PARTITIONS: '1' }, { changes: 'runs' }))
    for (const room of ['r1', 'r2', 'r3']) await publishEvent(w, storedEvent('chat.message.posted', { room, user: 'ann', text: room }, room))
    await w.startWorker()
    await caughtUp(w)
    const messages = await until('3 runs', async () => {
      const m = await chatMessages(w)
      return m.length === 3 ? m : undefined
    })
    expect(messages.map((m) => m.subject).sort()).toEqual(['r1', 'r2', 'r3'].map((r) => `${w.config.FANFARE_SUBJECT_PREFIX}.changes.chat.${r}`))
    expect(await w.database.db.select().from(changeHistory)).toEqual([])
  })
})

describe('pruneHistory', () => {
  const run = (channel: string, epoch: string, version: number, changes: number, createdAt = new Date()) => ({
    channel,
    epoch,
    version,
    createdAt,
    payload: JSON.stringify({ channel, epoch, version, at: '', changes: Array.from({ length: changes }, (_, i) => ({ kind: 'deleted', messageId: `m${version + i}` })) } satisfies ChangeRun),
  })
  /** A world with `overrides`, its channels at `versions` and `runs` in change_history. */
  const seed = async (overrides: Record<string, string>, versions: (typeof channelVersions.$inferInsert)[], runs: ReturnType<typeof run>[]) => {
    const w = (world = await createWorld(overrides))
    await w.database.db.insert(channelVersions).values(versions)
    await w.database.db.insert(changeHistory).values(runs)
    return w
  }
  const kept = async (w: World) => (await w.database.db.select().from(changeHistory).orderBy(asc(changeHistory.channel), asc(changeHistory.epoch), asc(changeHistory.version))).map((r) => `${r.channel}/${r.epoch}@${r.version}`)

  test('keeps every run holding one of the last FANFARE_HISTORY_SIZE versions (per kind), drops older runs, earlier epochs, runs past the TTL and runs of channels without a version row', async () => {
    const now = new Date()
    const versions = [
      { channel: 'chat:a', version: 12, epoch: 'e2' },
      { channel: 'leaderboard:b', version: 6, epoch: 'e1' },
      { channel: 'stream:c', version: 2, epoch: 'e1' },
    ]
    const w = await seed({ FANFARE_HISTORY_SIZE_CHAT: '5', FANFARE_HISTORY_SIZE_LEADERBOARD: '2', FANFARE_HISTORY_TTL_MS_STREAM: '60000' }, versions, [
      // chat:a at 12 keeps versions 8..12: run 7 (7-9) holds 8 and 9, so it stays; 1-3 and 4-6 go.
      run('chat:a', 'e1', 1, 5), // an earlier epoch
      run('chat:a', 'e2', 1, 3),
      run('chat:a', 'e2', 4, 3),
      run('chat:a', 'e2', 7, 3),
      run('chat:a', 'e2', 10, 3),
      // leaderboard:b at 6 keeps 5..6: run 5 starts exactly there, so run 3 (3-4) goes.
      run('leaderboard:b', 'e1', 1, 2),
      run('leaderboard:b', 'e1', 3, 2),
      run('leaderboard:b', 'e1', 5, 2),
      // stream:c: its kind keeps one minute; the first run is two minutes old.
      run('stream:c', 'e1', 1, 1, new Date(now.getTime() - 120_000)),
      run('stream:c', 'e1', 2, 1, now),
      // chat:gone has no channel_versions row (a rebuild's switch dropped it: its rebuilt model
      // never changed the channel): its runs of the replaced epoch go, however recent.
      run('chat:gone', 'e1', 1, 2),
      run('chat:gone', 'e1', 3, 2),
    ])
    const db = w.database.db
    expect(await pruneHistory(db, w.config, now)).toBe(8)
    expect(await kept(w)).toEqual(['chat:a/e2@7', 'chat:a/e2@10', 'leaderboard:b/e1@5', 'stream:c/e1@2'])
    expect(await pruneHistory(db, w.config, now)).toBe(0)
  })

  test('a scoped round prunes only the channels written since the last round and the rows that crossed their TTL since; a full round prunes the rest', async () => {
    const now = new Date()
    const ago = (ms: number) => new Date(now.getTime() - ms)
    const versions = [
      { channel: 'chat:a', version: 6, epoch: 'e2' },
      { channel: 'chat:b', version: 6, epoch: 'e1' },
      { channel: 'stream:c', version: 3, epoch: 'e1' },
    ]
    const w = await seed({ FANFARE_HISTORY_SIZE_CHAT: '2', FANFARE_HISTORY_TTL_MS_STREAM: '60000' }, versions, [
      // Written since the last round: keeps 5..6, and no other epoch (one named before its epoch, one after).
      run('chat:a', 'e0', 1, 2),
      run('chat:a', 'e2', 1, 2),
      run('chat:a', 'e2', 3, 2),
      run('chat:a', 'e2', 5, 2),
      run('chat:a', 'e9', 1, 2),
      // Not written since: its runs 1 and 3 hold none of 5..6, but only a write makes that so (here
      // the rows were put there by hand), so a scoped round does not look at them.
      run('chat:b', 'e1', 1, 2),
      run('chat:b', 'e1', 3, 2),
      run('chat:b', 'e1', 5, 2),
      // Its kind keeps a minute: run 1 crossed it before the last round (10 s ago) by more than
      // LATE_MS (an earlier round deleted such a row), run 2 since it; run 3 is new.
      run('stream:c', 'e1', 1, 1, ago(60_000 + 10_000 + LATE_MS + 5_000)),
      run('stream:c', 'e1', 2, 1, ago(65_000)),
      run('stream:c', 'e1', 3, 1, now),
    ])
    const db = w.database.db
    expect(await pruneHistory(db, w.config, now, { channels: ['chat:a'], since: ago(10_000) })).toBe(5)
    expect(await kept(w)).toEqual(['chat:a/e2@5', 'chat:b/e1@1', 'chat:b/e1@3', 'chat:b/e1@5', 'stream:c/e1@1', 'stream:c/e1@3'])
    expect(await pruneHistory(db, w.config, now)).toBe(3)
    expect(await kept(w)).toEqual(['chat:a/e2@5', 'chat:b/e1@5', 'stream:c/e1@3'])
  })

  test('the pruner: every row at its first round, then the channels it is told were written; told again when another process held the lock', async () => {
    const w = await seed({ FANFARE_HISTORY_SIZE_CHAT: '2' }, [{ channel: 'chat:b', version: 4, epoch: 'e1' }], [run('chat:b', 'e1', 1, 2), run('chat:b', 'e1', 3, 2)])
    const db = w.database.db
    const touched = historyTouches()
    const pruner = startHistoryPruner({ db, config: w.config, logger: createLogger('silent'), touched, intervalMs: 50 })
    try {
      await until('the first round, a full one', async () => (await kept(w)).join() === 'chat:b/e1@3')
      // A write the pruner is not told of: left alone.
      await db.insert(changeHistory).values([run('chat:b', 'e1', 5, 2)])
      await db.update(channelVersions).set({ version: 6 })
      await Bun.sleep(300)
      expect(await kept(w)).toEqual(['chat:b/e1@3', 'chat:b/e1@5'])
      // Told while another process holds the lock: the rounds skip, and keep the channel for later.
      const lock = await holdHistoryLock(w)
      try {
        touched.add([{ channel: 'chat:b' }])
        await Bun.sleep(300)
        expect(await kept(w)).toEqual(['chat:b/e1@3', 'chat:b/e1@5'])
      } finally {
        await lock.release()
      }
      await until('pruned once the lock is free', async () => (await kept(w)).join() === 'chat:b/e1@5')
    } finally {
      await pruner.stop()
    }
  })

  test('a worker tells its pruner which channels its batches wrote', async () => {
    const w = (world = await createWorld({ FANFARE_PARTITIONS: '1', FANFARE_HISTORY_SIZE_CHAT: '2' }))
    await w.startWorker({ historyPruneMs: 50 })
    // Past the pruner's first round (a full one): from now on it looks only at what it is told of.
    await Bun.sleep(500)
    for (let i = 1; i <= 3; i++) {
      await publishEvent(w, storedEvent('chat.message.posted', { room: 'r1', user: 'ann', text: `m${i}` }, `m${i}`))
      await caughtUp(w)
    }
    // Three batches, one run each (versions 1, 2, 3): keeping 2..3, run 1 goes.
    const [{ epoch }] = await w.database.db.select().from(channelVersions).where(eq(channelVersions.channel, 'chat:r1'))
    await until('run 1 pruned', async () => (await kept(w)).join() === `chat:r1/${epoch}@2,chat:r1/${epoch}@3`)
  })
})
